// The upstream client: one undici Pool per backend (keep-alive, bounded connections), bodies
// streamed both ways. The only module that imports undici; its errors become SidecarError codes
// here and nowhere else.
import { Pool } from 'undici'
import { ERRORS, SidecarError, isErrorCode, type ErrorCode } from '../errors.js'
import { endToEnd } from '../headers.js'
import type { Metrics } from '../metrics.js'
import { Readable, type Duplex } from 'node:stream'
import type { Cancel } from '../pipeline/cancel.js'
import type { HeaderMap, ProxyRequest, ProxyResponse, RequestContext } from '../pipeline/types.js'

export interface PoolOptions {
  url: string
  maxConnections: number
  connectTimeoutMs: number
  idleTimeoutMs: number
  /** Deadline for the response headers. */
  requestTimeoutMs: number
  /** Longest silence inside a response body. */
  responseIdleTimeoutMs: number
}

const STATUS_CLASS = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx']

export type ProbeResult = { ok: true; status: number } | { ok: false; error: ErrorCode; detail: string }

/** One backend's connection pool. */
export class Upstream {
  private readonly pool: Pool

  constructor(
    readonly backend: string,
    opts: PoolOptions,
    private readonly metrics: Metrics,
  ) {
    this.pool = new Pool(opts.url, {
      connections: opts.maxConnections,
      connect: { timeout: opts.connectTimeoutMs },
      // set once per pool rather than per request: the same deadline for every request
      headersTimeout: opts.requestTimeoutMs,
      bodyTimeout: opts.responseIdleTimeoutMs,
      keepAliveTimeout: opts.idleTimeoutMs,
      // an app's `Keep-Alive: timeout=N` may shorten, never lengthen, our idle timeout
      keepAliveMaxTimeout: opts.idleTimeoutMs,
    })
  }

  /**
   * Forwards one attempt. `isHealthy`: the health checker's verdict; a failure of an unhealthy
   * backend is answered as upstream_unhealthy (503), the app being known to be down, not as a
   * one-off 502.
   */
  async request(req: ProxyRequest, ctx: RequestContext, isHealthy: () => boolean): Promise<ProxyResponse> {
    const backend = this.backend
    try {
      if (req.upgrade !== undefined) return await this.upgrade(req, ctx)
      const res = await this.pool.request({
        method: req.method,
        path: req.path,
        headers: req.headers,
        body: req.body,
        // the client leaving or the attempt's deadline (the pool's headersTimeout is a backstop)
        signal: ctx.attemptSignal,
      })
      this.metrics.countAttempt(backend, STATUS_CLASS[Math.floor(res.statusCode / 100)] ?? 'other')
      if (hasNoBody(req.method, res.statusCode)) {
        // A 304 may carry the Content-Length of the representation it stands for (RFC 9110
        // 8.6), and undici 7 then fails the empty body as a length mismatch (closing that
        // connection); stray bytes after a 204/304 do the same. Neither may cost the client its
        // answer: relay the headers, and let undici's empty body run out, error or not.
        res.body.on('error', noop).resume()
        return { status: res.statusCode, headers: endToEnd(res.headers) as HeaderMap, body: null }
      }
      // A failure mid-body surfaces on the stream (the listener then cuts the client
      // connection, so a truncated response never passes for a complete one); name it for the log.
      res.body.once('error', (err) => {
        ctx.error ??= upstreamErrorCode(err)
      })
      return { status: res.statusCode, headers: endToEnd(res.headers) as HeaderMap, body: res.body, trailers: res.trailers }
    } catch (err) {
      const code = upstreamErrorCode(err)
      this.metrics.countAttempt(backend, code)
      const down = ERRORS[code].blame === 'upstream' && !isHealthy()
      // One of ours (a deadline's abort reason) already carries the catalogue message.
      const detail = (err as Error).name === 'SidecarError' ? (err as SidecarError).detail : (err as Error).message
      throw new SidecarError(down ? 'upstream_unhealthy' : code, { cause: err, detail: down ? `${code}: ${detail}` : detail })
    }
  }

  /**
   * The handshake of an HTTP/1.1 Upgrade: a 101 gives the connection to the app as the tunnel's
   * upstream half (undici hands it over, any bytes read past the 101 put back); any other answer
   * is an ordinary response, streamed.
   */
  private upgrade(req: ProxyRequest, ctx: RequestContext): Promise<ProxyResponse> {
    return new Promise((resolve, reject) => {
      const handler = new UpgradeHandler(ctx.attemptSignal, (response) => {
        this.metrics.countAttempt(this.backend, STATUS_CLASS[Math.floor(response.status / 100)] ?? 'other')
        resolve(response)
      }, reject)
      this.pool.dispatch({ method: req.method, path: req.path, headers: req.headers, upgrade: req.upgrade }, handler)
    })
  }

  /** One GET to `path`: is the backend answering HTTP at all? */
  async probe(path: string, timeoutMs: number): Promise<ProbeResult> {
    try {
      const res = await this.pool.request({
        method: 'GET',
        path,
        headers: { 'user-agent': 'sidecar-proxy-probe' },
        signal: AbortSignal.timeout(timeoutMs),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      })
      await res.body.dump()
      return { ok: true, status: res.statusCode }
    } catch (err) {
      return { ok: false, error: upstreamErrorCode(err), detail: (err as Error).message }
    }
  }

  /** Graceful: requests already sent finish, then the connections close. */
  close(): Promise<void> {
    return this.pool.close()
  }
}

/** undici's dispatch handler for an upgrade handshake (its `upgrade()` API refuses any answer but
 *  a 101, and a refusal such as a 401 is the app's answer to pass on). */
class UpgradeHandler {
  private body: Readable | undefined
  private done = false
  private unlink: () => void = noop

  constructor(
    private readonly signal: Cancel,
    private readonly answer: (response: ProxyResponse) => void,
    private readonly fail: (err: unknown) => void,
  ) {}

  onConnect(abort: (reason?: Error) => void): void {
    this.unlink = this.signal.onAbort((reason) => abort(reason as Error))
  }

  onUpgrade(status: number, rawHeaders: Buffer[], socket: Duplex): void {
    this.settle()
    this.answer({ status, headers: endToEnd(parseRawHeaders(rawHeaders)), body: null, tunnel: socket })
  }

  onHeaders(status: number, rawHeaders: Buffer[], resume: () => void): boolean {
    this.body = new Readable({ read: resume })
    this.settle()
    this.answer({ status, headers: endToEnd(parseRawHeaders(rawHeaders)), body: this.body })
    return true
  }

  onData(chunk: Buffer): boolean {
    return this.body!.push(chunk)
  }

  onComplete(): void {
    this.body?.push(null)
  }

  onError(err: Error): void {
    if (this.done) this.body?.destroy(err)
    else {
      this.settle()
      this.fail(err)
    }
  }

  private settle(): void {
    this.done = true
    this.unlink()
  }
}

function parseRawHeaders(raw: Buffer[]): HeaderMap {
  const headers: HeaderMap = {}
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1').toLowerCase()
    const value = raw[i + 1]!.toString('latin1')
    const had = headers[name]
    headers[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value]
  }
  return headers
}

/** RFC 9110 6.4.1: answers to HEAD, and 1xx, 204 and 304 answers, have no content. */
function hasNoBody(method: string, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304 || status < 200
}

function noop(): void {}

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
