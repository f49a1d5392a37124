// Tracing, once per request: the caller's W3C traceparent (or B3) is continued, an invalid one
// is treated as absent (a new trace; its tracestate is dropped), the sampling decision is made
// (parent-based: a caller's flag is followed, a request without a parent is sampled at
// sampleRatio) and, for a sampled request, its SERVER span is recorded when the exchange is over.
// Only in the stack when tracing is configured. What the app is told is set per attempt, below
// retry (layers/attempt-span.ts); the access line reads ctx.trace for trace_id and span_id.
import { Ids, KNOWN_METHODS, SERVER, hostAndPort, incomingParent, type SpanRecord, type SpanSink } from '../tracing/context.js'
import { DEFAULT_ROUTE } from './route-match.js'
import type { EndHook, HeaderMap, Layer, ProxyRequest, RequestContext, RequestOutcome, RequestTrace } from '../pipeline/types.js'

export interface TracingOptions {
  sampleRatio: number
}

export interface TracingDeps {
  sink: SpanSink
  ids: Ids
  /** [0, 1); the sampling draw. Tests pass their own. */
  random?: () => number
}

export function createTracingLayer(opts: TracingOptions, deps: TracingDeps): Layer {
  const { sink, ids } = deps
  const random = deps.random ?? Math.random
  const ratio = opts.sampleRatio
  const recordSpan: EndHook = (outcome, req, ctx) => sink.record(serverSpan(req, ctx, ctx.trace!, outcome))
  return (next) => (req, ctx, reply) => {
    const headers = req.headers as HeaderMap
    const parent = incomingParent(headers)
    // a tracestate without a valid traceparent (or invalid itself) is not the app's to see
    if (headers.tracestate !== undefined && parent?.traceState === undefined) delete headers.tracestate
    const trace: RequestTrace = {
      traceId: parent === null ? ids.traceId() : parent.traceId,
      spanId: ids.spanId(),
      parentSpanId: parent?.spanId,
      sampled: parent === null ? ratio > 0 && random() < ratio : parent.sampled,
      traceState: parent?.traceState,
      via: parent?.via,
    }
    ctx.trace = trace
    if (trace.sampled) ctx.onEnd.push(recordSpan)
    next(req, ctx, reply)
  }
}

/** The SERVER span, with OpenTelemetry's HTTP server attributes and the proxy's own. */
export function serverSpan(req: ProxyRequest, ctx: RequestContext, trace: RequestTrace, outcome: RequestOutcome): SpanRecord {
  const known = KNOWN_METHODS.has(req.method)
  const query = req.path.indexOf('?')
  const server = hostAndPort(req.headers.host)
  const route = routeOf(ctx)
  const attributes: SpanRecord['attributes'] = {
    'http.request.method': known ? req.method : '_OTHER',
    'url.path': query === -1 ? req.path : req.path.slice(0, query),
    'url.scheme': ctx.protocol,
    'http.response.status_code': outcome.status,
    'network.protocol.version': ctx.httpVersion === '2.0' ? '2' : ctx.httpVersion,
    'client.address': ctx.clientAddress,
    'sidecar.attempts': ctx.attempt,
  }
  if (!known) attributes['http.request.method_original'] = req.method
  if (route !== undefined) attributes['http.route'] = route
  if (server !== undefined) {
    attributes['server.address'] = server.address
    if (server.port !== undefined) attributes['server.port'] = server.port
  }
  if (ctx.backend !== undefined) attributes['sidecar.backend'] = ctx.backend
  if (ctx.error !== undefined) attributes['sidecar.error'] = ctx.error
  const error = outcome.status >= 500
  if (error) attributes['error.type'] = ctx.error ?? String(outcome.status)
  if (!outcome.complete) attributes['sidecar.incomplete'] = true
  return {
    name: route ?? `HTTP ${known ? req.method : 'OTHER'}`,
    kind: SERVER,
    traceId: trace.traceId,
    spanId: trace.spanId,
    parentSpanId: trace.parentSpanId,
    parentRemote: trace.parentSpanId !== undefined,
    traceState: trace.traceState,
    start: ctx.startedAt,
    end: ctx.startedAt + BigInt(Math.round(outcome.durationSeconds * 1e9)),
    attributes,
    error,
  }
}

/** The route the request matched (the route-match layer above set it): the span is named after
 *  it and carries http.route; none for a request no route matched (the top-level settings). */
function routeOf(ctx: RequestContext): string | undefined {
  return ctx.route === DEFAULT_ROUTE ? undefined : ctx.route
}
