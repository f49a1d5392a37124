// The upstream client: one undici Pool per backend (keep-alive, bounded connections), bodies
// streamed both ways. The only module that imports undici; its errors become SidecarError codes
// here and nowhere else.
import { Pool } from 'undici'
import { SidecarError, isErrorCode, type ErrorCode } from '../errors.js'
import { endToEnd } from '../headers.js'
import type { Metrics } from '../metrics.js'
import type { Handler, HeaderMap } from '../pipeline/types.js'

export interface BackendOptions {
  name: string
  url: string
  maxConnections: number
  connectTimeoutMs: number
  idleTimeoutMs: number
}

export interface UpstreamOptions {
  /** Deadline for the response headers. */
  requestTimeoutMs: number
  /** Longest silence inside a response body. */
  responseIdleTimeoutMs: number
}

const STATUS_CLASS = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx']

export type ProbeResult = { ok: true; status: number } | { ok: false; error: ErrorCode; detail: string }

export class Upstreams {
  private readonly pools = new Map<string, { pool: Pool; settings: string }>()
  /** Pools replaced or removed by a reload, finishing what they had in flight. */
  private readonly retiring = new Set<Promise<void>>()

  constructor(backends: readonly BackendOptions[], opts: UpstreamOptions) {
    this.sync(backends, opts)
  }

  /**
   * Makes the pools match `backends` (after a config reload): a new backend gets a pool, one
   * whose settings changed gets a new pool, and a pool no longer wanted is closed gracefully:
   * requests already sent on it finish, new attempts go to the current pool of that name.
   */
  sync(backends: readonly BackendOptions[], opts: UpstreamOptions): void {
    const wanted = new Set<string>()
    for (const b of backends) {
      wanted.add(b.name)
      const settings = JSON.stringify([b.url, b.maxConnections, b.connectTimeoutMs, b.idleTimeoutMs, opts.requestTimeoutMs, opts.responseIdleTimeoutMs])
      const existing = this.pools.get(b.name)
      if (existing?.settings === settings) continue
      if (existing) this.retire(existing.pool)
      const pool = new Pool(b.url, {
        connections: b.maxConnections,
        connect: { timeout: b.connectTimeoutMs },
        // set once per pool rather than per request: the same deadline for every request
        headersTimeout: opts.requestTimeoutMs,
        bodyTimeout: opts.responseIdleTimeoutMs,
        keepAliveTimeout: b.idleTimeoutMs,
        // an app's `Keep-Alive: timeout=N` may shorten, never lengthen, our idle timeout
        keepAliveMaxTimeout: b.idleTimeoutMs,
      })
      this.pools.set(b.name, { pool, settings })
    }
    for (const [name, { pool }] of this.pools) {
      if (wanted.has(name)) continue
      this.pools.delete(name)
      this.retire(pool)
    }
  }

  has = (backend: string): boolean => this.pools.has(backend)

  private retire(pool: Pool): void {
    const closing = pool.close().finally(() => this.retiring.delete(closing))
    this.retiring.add(closing)
  }

  /** The terminal handler of the pipeline: forwards to `ctx.backend`.
   *  `isHealthy`: the health checker's verdict; a failure of an unhealthy backend is answered
   *  as upstream_unhealthy (503), the app being known to be down, not as a one-off 502. */
  handler(deps: { metrics: Metrics; isHealthy: (backend: string) => boolean }): Handler {
    return async (req, ctx) => {
      const backend = ctx.backend
      const pool = backend === undefined ? undefined : this.pools.get(backend)?.pool
      // only after a reload removed the backend this request's attempt was picked from
      if (!pool || backend === undefined) throw new SidecarError('no_backend', { detail: `backend ${backend} was removed from the config` })
      try {
        const res = await pool.request({
          method: req.method,
          path: req.path,
          headers: req.headers,
          body: req.body,
          // the client leaving or the attempt's deadline (the pool's headersTimeout is a backstop)
          signal: ctx.attemptSignal,
        })
        deps.metrics.countAttempt(backend, STATUS_CLASS[Math.floor(res.statusCode / 100)] ?? 'other')
        // A failure mid-body surfaces on the stream (the listener then cuts the client
        // connection, so a truncated response never passes for a complete one); name it for the log.
        res.body.once('error', (err) => {
          ctx.error ??= upstreamErrorCode(err)
        })
        return { status: res.statusCode, headers: endToEnd(res.headers) as HeaderMap, body: res.body }
      } catch (err) {
        const code = upstreamErrorCode(err)
        deps.metrics.countAttempt(backend, code)
        const down = code.startsWith('upstream_') && !deps.isHealthy(backend)
        // One of ours (a deadline's abort reason) already carries the catalogue message.
        const detail = (err as Error).name === 'SidecarError' ? (err as SidecarError).detail : (err as Error).message
        throw new SidecarError(down ? 'upstream_unhealthy' : code, { cause: err, detail: down ? `${code}: ${detail}` : detail })
      }
    }
  }

  /** One GET to `path` on a backend: is it answering HTTP at all? */
  async probe(backend: string, path: string, timeoutMs: number): Promise<ProbeResult> {
    const pool = this.pools.get(backend)?.pool
    if (!pool) return { ok: false, error: 'internal', detail: `unknown backend ${backend}` }
    try {
      const res = await pool.request({
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

  async close(): Promise<void> {
    await Promise.all([...[...this.pools.values()].map((p) => p.pool.close()), ...this.retiring])
  }
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
    // The proxy's own limits, not the backend's fault: not retried, not counted by the breaker
    // (its codes start with upstream_).
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
