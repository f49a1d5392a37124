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
  private readonly pools = new Map<string, Pool>()

  constructor(backends: readonly BackendOptions[], opts: UpstreamOptions) {
    for (const b of backends) {
      this.pools.set(
        b.name,
        new Pool(b.url, {
          connections: b.maxConnections,
          connect: { timeout: b.connectTimeoutMs },
          // set once per pool rather than per request: the same deadline for every request
          headersTimeout: opts.requestTimeoutMs,
          bodyTimeout: opts.responseIdleTimeoutMs,
          keepAliveTimeout: b.idleTimeoutMs,
          // an app's `Keep-Alive: timeout=N` may shorten, never lengthen, our idle timeout
          keepAliveMaxTimeout: b.idleTimeoutMs,
        }),
      )
    }
  }

  /** The terminal handler of the pipeline: forwards to `ctx.backend`. */
  /** `isHealthy`: the health checker's verdict; a failure of an unhealthy backend is answered
   *  as upstream_unhealthy (503), the app being known to be down, not as a one-off 502. */
  handler(deps: { metrics: Metrics; isHealthy: (backend: string) => boolean }): Handler {
    return async (req, ctx) => {
      const backend = ctx.backend
      const pool = backend === undefined ? undefined : this.pools.get(backend)
      if (!pool || backend === undefined) throw new SidecarError('internal', { detail: `no pool for backend ${backend}` })
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
        throw new SidecarError(down ? 'upstream_unhealthy' : code, { cause: err, detail: down ? `${code}: ${(err as Error).message}` : (err as Error).message })
      }
    }
  }

  /** One GET to `path` on a backend: is it answering HTTP at all? */
  async probe(backend: string, path: string, timeoutMs: number): Promise<ProbeResult> {
    const pool = this.pools.get(backend)
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
    await Promise.all([...this.pools.values()].map((p) => p.close()))
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
    case 'UND_ERR_SOCKET':
    case 'ECONNRESET':
    case 'EPIPE':
      return 'upstream_reset'
    default:
      return 'internal'
  }
}
