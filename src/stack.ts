// The request path, top to bottom: the one ordered list of layers. Nothing is inserted by name
// anywhere else; a new policy is a new line here and a new file in layers/.
import type { Config } from './config/schema.js'
import type { Clock } from './clock.js'
import { createAccessLogLayer } from './layers/access-log.js'
import { createAttemptSpanLayer } from './layers/attempt-span.js'
import { createBreakerLayer } from './layers/breaker.js'
import { createLimitsLayer } from './layers/limits.js'
import { createOverloadLayer } from './layers/overload.js'
import { createPickLayer } from './layers/pick.js'
import { createReceiveLayer } from './layers/receive.js'
import { createRespondLayer } from './layers/respond.js'
import { createRetryLayer } from './layers/retry.js'
import { createTracingLayer } from './layers/tracing.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import { compose } from './pipeline/compose.js'
import type { BufferBudget } from './pipeline/buffers.js'
import type { Handler, Layer } from './pipeline/types.js'
import type { Ids, SpanSink } from './tracing/context.js'
import type { Backends } from './upstream/backends.js'

export interface StackDeps {
  logger: Logger
  metrics: Metrics
  clock: Clock
  /** Per backend: pool, breaker, health verdict and overload gate. */
  backends: Backends
  /** The one ceiling for request and response buffers. */
  buffers: BufferBudget
  /** Present only when the config has a `tracing` section (tracing/tracer.ts, started by app.ts). */
  tracing?: { sink: SpanSink; ids: Ids } | undefined
}

// Built again from each reloaded config; the state that must outlive a reload (pools, breakers,
// health, in-flight counts) lives in `backends` and is shared by every generation of the stack.

export function buildStack(config: Config, deps: StackDeps): Handler {
  const { retry, limits } = config
  const { backends, tracing } = deps
  // tracing off: its two layers are not in the list at all
  const traced = config.tracing !== undefined && tracing !== undefined ? { opts: config.tracing, deps: tracing } : undefined
  const layers: Layer[] = [
    createRespondLayer(), //                                   errors -> the catalogue's local reply
    createAccessLogLayer(config.log, deps), //                 one JSON line and the request metrics
    ...(traced ? [createTracingLayer(traced.opts, traced.deps)] : []), // traceparent in, sampling, the SERVER span
    createLimitsLayer(limits, deps), //                        header count 431, body size 413
    createReceiveLayer(limits, deps), //                       small bodies received whole first; idle bodies 408
    createRetryLayer({ ...retry, requestTimeoutMs: limits.requestTimeoutMs }, deps), // budgeted tries
    // ---- below here: once per attempt ----
    ...(traced ? [createAttemptSpanLayer(config.backends, traced.deps)] : []), // the app's traceparent, a CLIENT span per attempt
    createPickLayer(config.backends, config.routing, backends), // header, sticky cookie, weights; skips open/unhealthy
    createOverloadLayer(limits, { ...deps, gateOf: (name) => backends.get(name)?.gate }), // per backend: in flight + waiting, else 503
    createBreakerLayer((name) => backends.get(name)?.breaker), // per backend: counts attempts
  ]
  return compose(layers, backends.handler()) //                  undici Pool per backend
}
