// Access log + request metrics: one JSON line and one count per request, written when the
// exchange is over (the status alone is known earlier, the bytes and duration only at the end).
import { accessLog, type Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { EndHook, Layer } from '../pipeline/types.js'

export interface AccessLogOptions {
  /** false keeps the metrics and drops the per-request log line. */
  accessLog: boolean
}

export function createAccessLogLayer(opts: AccessLogOptions, deps: { logger: Logger; metrics: Metrics }): Layer {
  const { metrics } = deps
  const write = accessLog(deps.logger)
  // one hook for every request: what it needs comes with the call
  const ended: EndHook = (outcome, req, ctx) => {
    const backend = ctx.backend ?? 'none'
    metrics.observeRequest(backend, req.method, outcome.status, outcome.durationSeconds, ctx.route, ctx.trace)
    if (!opts.accessLog) return
    write({
      requestId: ctx.id,
      client: ctx.clientAddress,
      // who the per-client policies counted, when not the peer address (a certificate's
      // identity, the client a trusted proxy named)
      clientKey: ctx.clientKey === ctx.clientAddress ? undefined : ctx.clientKey,
      method: req.method,
      path: req.path,
      status: outcome.status,
      route: ctx.route,
      backend,
      durationMs: outcome.durationSeconds * 1e3, // written to the microsecond
      bytesIn: outcome.bytesIn,
      bytesOut: outcome.bytesOut,
      attempts: ctx.attempt > 1 ? ctx.attempt : undefined,
      error: ctx.error,
      incomplete: outcome.complete ? undefined : true,
      tunnel: outcome.tunnel,
      // with tracing on: the request's trace and its SERVER span (sampled or not)
      trace_id: ctx.trace?.traceId,
      span_id: ctx.trace?.spanId,
    })
  }
  return (next) => (req, ctx, reply) => {
    ctx.onEnd.push(ended)
    next(req, ctx, reply)
  }
}
