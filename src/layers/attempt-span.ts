// Tracing, once per attempt (below retry): the app is told a traceparent naming this attempt's
// CLIENT span, with the request's trace id, on every request while tracing is on (flags 00 when
// not sampled, so that the app's own tracer stays in the trace); a sampled attempt's CLIENT span
// is recorded when its response headers come or it fails. Only in the stack when tracing is
// configured; with no trace on the context it passes the request on untouched.
import { toSidecarError } from '../errors.js'
import { CLIENT, Ids, KNOWN_METHODS, hostAndPort, propagate, type SpanRecord, type SpanSink } from '../tracing/context.js'
import { pass } from '../pipeline/compose.js'
import type { HeaderMap, Layer } from '../pipeline/types.js'

export interface AttemptSpanDeps {
  sink: SpanSink
  ids: Ids
}

export function createAttemptSpanLayer(backends: ReadonlyArray<{ name: string; url: string }>, deps: AttemptSpanDeps): Layer {
  const { sink, ids } = deps
  const targets = new Map(backends.map((b) => [b.name, hostAndPort(new URL(b.url).host)]))
  return (next) => (req, ctx, reply) => {
    const trace = ctx.trace
    if (trace === undefined) return next(req, ctx, reply)
    const spanId = ids.spanId()
    // the request's own headers on the first attempt, retry's copy on a later one
    propagate(req.headers as HeaderMap, trace, spanId)
    if (!trace.sampled) return next(req, ctx, reply)
    const start = process.hrtime.bigint()
    const attempt = ctx.attempt
    const record = (status: number | undefined, failure: string | undefined) => {
      const known = KNOWN_METHODS.has(req.method)
      const backend = ctx.backend
      const target = backend === undefined ? undefined : targets.get(backend)
      const attributes: SpanRecord['attributes'] = { 'http.request.method': known ? req.method : '_OTHER', 'sidecar.attempt': attempt }
      if (!known) attributes['http.request.method_original'] = req.method
      if (attempt > 1) attributes['http.request.resend_count'] = attempt - 1
      if (status !== undefined) attributes['http.response.status_code'] = status
      if (backend !== undefined) attributes['sidecar.backend'] = backend
      if (target !== undefined) {
        attributes['server.address'] = target.address
        if (target.port !== undefined) attributes['server.port'] = target.port
      }
      const error = failure !== undefined || (status !== undefined && status >= 500)
      if (failure !== undefined) attributes['sidecar.error'] = failure
      if (error) attributes['error.type'] = failure ?? String(status)
      sink.record({
        name: `HTTP ${known ? req.method : 'OTHER'}`,
        kind: CLIENT,
        traceId: trace.traceId,
        spanId,
        parentSpanId: trace.spanId,
        parentRemote: false,
        traceState: trace.traceState,
        start,
        end: process.hrtime.bigint(),
        attributes,
        error,
      })
    }
    pass(next, req, ctx, {
      ok: (response) => {
        record(response.status, undefined)
        reply.ok(response)
      },
      fail: (err) => {
        record(undefined, toSidecarError(err).code)
        reply.fail(err)
      },
    })
  }
}
