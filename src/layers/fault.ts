// Fault injection, per route (Envoy's fault filter, Istio's HTTPFaultInjection): a delay before
// the request goes on, and an abort that answers for the app, each for a share of requests, to
// see how callers cope with a slow or failing service. With headerControl, a caller may ask for
// either per request (x-sidecar-fault-delay-ms: N, x-sidecar-fault-abort: STATUS); those headers
// never reach the app (the listener drops them, headers.ts, and hands their values over as
// req.faultAsked), whether or not this layer is on.
//
// It sits below the rate limit (a limited request is refused, not delayed) and above receive and
// retry: an abort reads no body and is never retried; a delay waits before the request is
// forwarded, and ends at once, with client_closed, when the client leaves. The delay comes first,
// then the abort (Envoy's order). An abort is the catalogue's fault_injected with the fault's
// status (gRPC-shaped for gRPC requests, with grpcStatus): blamed on no backend, so no breaker,
// retry budget or health check counts it.
import type { Clock } from '../clock.js'
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import { pass } from '../pipeline/compose.js'
import type { Layer } from '../pipeline/types.js'

export interface FaultOptions {
  delay?: { ms: number; percent: number } | undefined
  abort?: { status: number; grpcStatus?: number | undefined; percent: number } | undefined
  headerControl: boolean
}

export interface FaultDeps {
  metrics: Pick<Metrics, 'countFault'>
  clock: Clock
  /** [0, 1): which requests get a fault. Tests bring their own. */
  random?: (() => number) | undefined
  /** The route's name, for the metric. */
  route: string
  /** The longest delay a caller may ask for with x-sidecar-fault-delay-ms (longer asks are cut
   *  to it): the route's timeout, at most 60 s. */
  maxAskedDelayMs: number
}

/** The cap on a delay asked for by header when the route has no timeout of its own. */
export const MAX_ASKED_DELAY_MS = 60_000

export function createFaultLayer(opts: FaultOptions, deps: FaultDeps): Layer {
  const random = deps.random ?? Math.random
  const { delay, abort, headerControl } = opts
  const { route, clock, metrics } = deps
  const hit = (percent: number) => percent > 0 && random() * 100 < percent
  return (next) => (req, ctx, reply) => {
    const asked = headerControl ? req.faultAsked : undefined
    const askedDelay = asked === undefined ? undefined : delayAsked(asked.delayMs, deps.maxAskedDelayMs)
    const askedAbort = asked === undefined ? undefined : statusAsked(asked.abort)
    // each decided once per request, the configured share drawn only when the caller asked nothing
    const delayMs = askedDelay ?? (delay !== undefined && hit(delay.percent) ? delay.ms : 0)
    const abortStatus = askedAbort ?? (abort !== undefined && hit(abort.percent) ? abort.status : 0)
    if (delayMs === 0 && abortStatus === 0) return next(req, ctx, reply)
    const aborted = () => {
      metrics.countFault(route, 'abort')
      return new SidecarError('fault_injected', { detail: `HTTP ${abortStatus}`, status: abortStatus, grpcStatus: abort?.grpcStatus })
    }
    if (delayMs === 0) return reply.fail(aborted())
    metrics.countFault(route, 'delay')
    clock.sleep(delayMs, ctx.signal).then(
      () => (abortStatus === 0 ? pass(next, req, ctx, reply) : reply.fail(aborted())),
      () => reply.fail(new SidecarError('client_closed', { detail: 'during an injected delay' })),
    )
  }
}

/** x-sidecar-fault-delay-ms: whole milliseconds, cut to `max`; anything else asks nothing. */
function delayAsked(value: string | undefined, max: number): number | undefined {
  if (value === undefined || !/^\d{1,9}$/.test(value)) return undefined
  const ms = Math.min(Number(value), max)
  return ms > 0 ? ms : undefined
}

/** x-sidecar-fault-abort: an HTTP status, 200-599; anything else asks nothing. */
function statusAsked(value: string | undefined): number | undefined {
  if (value === undefined || !/^[2-5]\d\d$/.test(value)) return undefined
  return Number(value)
}
