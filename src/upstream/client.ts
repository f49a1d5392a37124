// The upstream client: one undici Pool per backend (keep-alive, bounded connections), bodies
// streamed both ways. The only module that imports undici; its errors become SidecarError codes
// here and nowhere else.
import { Pool, util, type Dispatcher } from 'undici'
import { ERRORS, SidecarError, isErrorCode, type ErrorCode } from '../errors.js'
import type { Metrics } from '../metrics.js'
import { Readable } from 'node:stream'
import type { BufferBudget } from '../pipeline/buffers.js'
import { Cancel } from '../pipeline/cancel.js'
import type { ClientProgress, ProxyRequest, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'
import { Exchange, type ExchangeOptions } from './exchange.js'
import { connectOptions, tlsFailure, type HandshakeLog, type UpstreamTls } from './tls.js'

export interface PoolOptions {
  url: string
  /** HTTP/1.1, or HTTP/2 with prior knowledge in the clear (gRPC apps). */
  protocol: 'http1' | 'h2c'
  maxConnections: number
  connectTimeoutMs: number
  idleTimeoutMs: number
  /** Longest silence inside a response body. */
  responseIdleTimeoutMs: number
  /** How far a response may be read ahead of a slow client. */
  responseBufferBytes?: number
  /** For an https:// url: what the backend is verified against and shown (upstream/tls.ts). */
  tls?: UpstreamTls
}

const STATUS_CLASS = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx']

/** Mirrored copies and health checks: their answers are read as they come. */
const NO_READ_AHEAD: ExchangeOptions = { readAhead: { bytes: 0, budget: undefined }, headerName: util.headerNameToString }

/** An answer (the HTTP status, and for a gRPC health check its serving status), or the error. */
export type ProbeResult = { ok: true; status: number; serving?: string } | { ok: false; error: ErrorCode; detail: string }

export interface ProbeOptions {
  path: string
  timeoutMs: number
  grpc?: { service: string } | undefined
}

/** grpc.health.v1.HealthCheckResponse.ServingStatus, by number. */
const SERVING_STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN']

/** One backend's connection pool, and the one connection its health checks use. */
export class Upstream {
  private readonly pool: Pool
  /** Health checks go on a connection of their own (as Envoy's do): a pool whose connections
   *  are all busy (slow clients holding them) must not make a healthy app look down. */
  private readonly probes: Pool
  /** The real traffic's exchanges: read ahead of slow clients. */
  private readonly forwarding: ExchangeOptions
  /** The SNI name of every request: undici would take it from each request's Host header. */
  private readonly servername: string | undefined
  private readonly https: boolean

  /** `buffers`: the budget responses are read ahead of slow clients from (limits.responseBufferBytes each). */
  constructor(
    readonly backend: string,
    opts: PoolOptions,
    private readonly deps: { metrics: Metrics; buffers?: BufferBudget | undefined; handshakes?: HandshakeLog | undefined },
  ) {
    this.forwarding = { ...NO_READ_AHEAD, readAhead: { bytes: opts.responseBufferBytes ?? 0, budget: deps.buffers } }
    this.servername = opts.tls?.servername ?? undefined
    this.https = opts.url.startsWith('https:')
    const pool = (connections: number) =>
      new Pool(opts.url, {
        connections,
        connect: {
          timeout: opts.connectTimeoutMs,
          // h2c: undici's Pool passes `useH2c` to its connector only from here
          ...(opts.protocol === 'h2c' && { useH2c: true }),
          ...(opts.tls && connectOptions(opts.tls)),
        },
        // No pool-wide deadline for the response headers: it is the retry layer's, per attempt,
        // and differs by route (a long-poll route may have none). undici's own would cut every
        // route at one value. Health checks keep their own timer (probe).
        headersTimeout: 0,
        bodyTimeout: opts.responseIdleTimeoutMs,
        keepAliveTimeout: opts.idleTimeoutMs,
        // an app's `Keep-Alive: timeout=N` may shorten, never lengthen, our idle timeout
        keepAliveMaxTimeout: opts.idleTimeoutMs,
        ...(opts.protocol === 'h2c' && { allowH2: true }),
      })
    this.pool = pool(opts.maxConnections)
    this.probes = pool(1)
  }

  /**
   * Forwards one attempt, answering `reply`. `backend`: whose health checker's verdict names a
   * failure; one of an unhealthy backend is answered as upstream_unhealthy (503), the app being
   * known to be down, not as a one-off 502.
   */
  request(req: ProxyRequest, ctx: RequestContext, backend: Checked, reply: Reply): void {
    this.dispatch(req, ctx.attemptSignal, new Attempt(this, ctx, backend, reply), this.forwarding, this.pool, ctx.progress)
  }

  /** An attempt's answer (Attempt): counted, and its failures named. */
  answered(response: ProxyResponse, ctx: RequestContext, seconds: number): void {
    this.deps.handshakes?.succeeded()
    this.deps.metrics.countAttempt(this.backend, STATUS_CLASS[Math.floor(response.status / 100)] ?? 'other', seconds, ctx.trace)
    // A failure mid-body surfaces on the stream (the listener then cuts the client
    // connection, so a truncated response never passes for a complete one); name it for the log.
    const body = response.body
    if (body !== null && !Buffer.isBuffer(body)) body.once('error', (err) => (ctx.error ??= upstreamErrorCode(err)))
  }

  /** An attempt's failure (Attempt), counted and named as the catalogue's. */
  failed(err: unknown, ctx: RequestContext, healthy: boolean, seconds: number): SidecarError {
    const { code, detail } = describeUpstreamError(err, this.https)
    this.deps.metrics.countAttempt(this.backend, code, seconds, ctx.trace)
    if (code === 'upstream_tls') this.deps.handshakes?.failed(detail!)
    // A handshake refused says what to fix; "unhealthy" (its health checks fail the same way) would not.
    const down = ERRORS[code].blame === 'upstream' && code !== 'upstream_tls' && !healthy
    return new SidecarError(down ? 'upstream_unhealthy' : code, { cause: err, detail: down ? `${code}: ${detail}` : detail })
  }

  /**
   * Sends a mirrored copy (layers/mirror.ts): straight to the pool, on the copy's own signal,
   * with no read-ahead and not counted as an attempt (upstream_attempts_total is the real
   * traffic's; the copy's fate is mirror_requests_total). Undici's errors stay as they are: the
   * caller only counts them.
   */
  shadow(req: ProxyRequest, signal: Cancel): Promise<ProxyResponse> {
    return this.exchange(req, signal)
  }

  /** One health check: a GET to `path` (is the backend answering HTTP at all?), or the standard
   *  gRPC health check of a service (what is it serving?). */
  async probe(check: ProbeOptions): Promise<ProbeResult> {
    const { timeoutMs, grpc } = check
    const deadline = new Cancel()
    const timer = setTimeout(() => deadline.abort(new SidecarError('upstream_timeout', { detail: `no answer within ${timeoutMs} ms` })), timeoutMs)
    try {
      const res = await this.exchange(
        {
          ...(grpc
            ? {
                method: 'POST',
                path: '/grpc.health.v1.Health/Check',
                headers: { 'user-agent': 'sidecar-proxy-probe', 'content-type': 'application/grpc', te: 'trailers' },
                body: Readable.from([healthCheckRequest(grpc.service)]),
                contentLength: null,
              }
            : { method: 'GET', path: check.path, headers: { 'user-agent': 'sidecar-proxy-probe' }, body: null, contentLength: null }),
          headerCount: 0,
          transferEncoding: null,
        },
        deadline,
        this.probes,
      )
      const chunks: Buffer[] = []
      if (Buffer.isBuffer(res.body)) chunks.push(res.body)
      else if (res.body !== null) for await (const chunk of res.body) chunks.push(chunk as Buffer)
      if (!grpc) return { ok: true, status: res.status }
      const body = Buffer.concat(chunks)
      const status = res.trailers?.['grpc-status'] ?? res.headers['grpc-status']
      const serving = status === '0' ? SERVING_STATUS[body[5] === 0x08 ? body[6]! : 0] ?? 'UNKNOWN' : `grpc-status ${status}`
      return { ok: true, status: res.status, serving }
    } catch (err) {
      const { code, detail } = describeUpstreamError(err, this.https)
      return { ok: false, error: code, detail: detail ?? ERRORS[code].message }
    } finally {
      clearTimeout(timer)
    }
  }

  /** One request to `pool`; resolves at the response's headers (or its 101). */
  private exchange(req: ProxyRequest, signal: Cancel, pool = this.pool): Promise<ProxyResponse> {
    return new Promise((resolve, reject) => this.dispatch(req, signal, { ok: resolve, fail: reject }, NO_READ_AHEAD, pool))
  }

  /** One request to `pool`: `answer` at the response's headers (or its 101), else `fail`. */
  private dispatch(
    req: ProxyRequest,
    signal: Cancel,
    reply: Reply,
    options: ExchangeOptions,
    pool = this.pool,
    progress?: ClientProgress,
  ): void {
    const handler = new Exchange(req.method, signal, reply, options, progress)
    const { method, path, headers, body, upgrade } = req
    const servername = this.servername
    // `servername` is read by undici's Request, though its types leave it out
    const opts: Dispatcher.DispatchOptions & { servername: string | undefined } =
      upgrade === undefined ? { method, path, headers, body, servername } : { method, path, headers, body, upgrade, servername }
    pool.dispatch(opts, handler)
  }

  /** Connections open to the backend now, busy or kept alive, the health checks' included. */
  get openConnections(): number {
    return this.pool.stats.connected + this.probes.stats.connected
  }

  /** Graceful: requests already sent finish, then the connections close. */
  async close(): Promise<void> {
    await Promise.all([this.pool.close(), this.probes.close()])
  }
}

/** A gRPC message (uncompressed, 5-byte length prefix) holding grpc.health.v1.HealthCheckRequest
 *  { string service = 1 }. */
/** A backend with its health checker's verdict of the moment (a reload may replace the checker). */
interface Checked {
  readonly health: { readonly healthy: boolean }
}

/** One forwarded attempt's way back: counted and named by its Upstream, then passed up. */
class Attempt implements Reply {
  /** performance.now() when the call was made. */
  private readonly start = performance.now()

  constructor(
    private readonly upstream: Upstream,
    private readonly ctx: RequestContext,
    private readonly backend: Checked,
    private readonly up: Reply,
  ) {}

  ok(response: ProxyResponse): void {
    this.upstream.answered(response, this.ctx, this.seconds())
    this.up.ok(response)
  }

  fail(err: unknown): void {
    this.up.fail(this.upstream.failed(err, this.ctx, this.backend.health.healthy, this.seconds()))
  }

  private seconds(): number {
    return (performance.now() - this.start) / 1e3
  }
}

function healthCheckRequest(service: string): Buffer {
  const name = Buffer.from(service)
  const message = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, name.length]), name])
  const frame = Buffer.alloc(5 + message.length)
  frame.writeUInt32BE(message.length, 1)
  message.copy(frame, 5)
  return frame
}

/** An upstream error's catalogue code, and what this occurrence adds to its message: words, never
 *  OpenSSL's text (a body must not carry it). */
function describeUpstreamError(err: unknown, https: boolean): { code: ErrorCode; detail: string | undefined } {
  const tls = https ? tlsFailure(err) : undefined
  if (tls !== undefined) return { code: 'upstream_tls', detail: tls }
  const code = upstreamErrorCode(err)
  const e = err as Error | null
  // One of ours (a deadline's abort reason) already carries the catalogue message.
  return { code, detail: e?.name === 'SidecarError' ? (e as SidecarError).detail : e?.message }
}

/** undici / socket error -> catalogue code. */
export function upstreamErrorCode(err: unknown): ErrorCode {
  const e = err as { code?: unknown; name?: string } | null
  const code = e?.code
  if (isErrorCode(code)) return code // ours, e.g. body_too_large from the request body
  if (e?.name === 'TimeoutError') return 'upstream_timeout' // AbortSignal.timeout
  if (e?.name === 'HTTPParserError') return 'upstream_bad_response' // may carry no code
  switch (code) {
    case 'ECONNREFUSED':
      return 'upstream_refused'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'upstream_unreachable'
    case 'UND_ERR_CONNECT_TIMEOUT':
      return 'upstream_connect_timeout'
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return 'upstream_timeout'
    case 'UND_ERR_ABORTED':
    case 'UND_ERR_ABORT':
    case 'ABORT_ERR':
      return 'client_closed'
    case 'UND_ERR_HEADERS_OVERFLOW':
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_INFO':
      return 'upstream_bad_response'
    // The proxy's own limits, not the backend's fault (the catalogue blames the proxy).
    case 'EMFILE':
    case 'ENFILE':
    case 'ENOBUFS':
    case 'ENOMEM':
      return 'local_resources_exhausted'
    case 'UND_ERR_SOCKET':
    case 'ECONNRESET':
    case 'EPIPE':
      return 'upstream_reset'
    default:
      return 'internal'
  }
}
