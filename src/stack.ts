// The request path, top to bottom: the one ordered list of layers. Nothing is inserted by name
// anywhere else; a new policy is a new line here and a new file in layers/.
//
// The top of the list runs once for every request; the route-match layer then names the
// request's route, and the rest of the list runs as that route built it: the same layers for
// every route, each with the route's settings merged over the top level's (routes[]: timeoutMs,
// retry, limits, weights; the top level is the route "default").
import type { Config, RouteConfig } from './config/schema.js'
import { defaultCanary, routeRetry, routeSetting } from './config/settings.js'
import type { Clock } from './clock.js'
import { createAccessLogLayer } from './layers/access-log.js'
import { createAttemptSpanLayer } from './layers/attempt-span.js'
import { createBreakerLayer } from './layers/breaker.js'
import { MAX_ASKED_DELAY_MS, createFaultLayer } from './layers/fault.js'
import { createLimitsLayer } from './layers/limits.js'
import { createMirrorLayer } from './layers/mirror.js'
import { createOverloadLayer } from './layers/overload.js'
import { createPickLayer } from './layers/pick.js'
import { createRateLimitLayer, RateLimitTables } from './layers/rate-limit.js'
import { createReceiveLayer } from './layers/receive.js'
import { createRespondLayer } from './layers/respond.js'
import { RetryBudget, type RetryBudgetOptions } from './layers/retry-budget.js'
import { createRetryLayer } from './layers/retry.js'
import { DEFAULT_ROUTE, createRouteMatchLayer } from './layers/route-match.js'
import { createTracingLayer } from './layers/tracing.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import { compose } from './pipeline/compose.js'
import type { BufferBudget } from './pipeline/buffers.js'
import { directReply } from './pipeline/local-reply.js'
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
  /** Rate-limit buckets kept across reloads (without it: fresh ones with each stack). */
  rateLimits?: RateLimitTables
  /** Present only when the config has a `tracing` section (tracing/tracer.ts, started by app.ts). */
  tracing?: { sink: SpanSink; ids: Ids } | undefined
  /** [0, 1): which requests get a fault (Math.random unless a test brings its own). */
  random?: (() => number) | undefined
}

// Built again from each reloaded config; the state that must outlive a reload (pools, breakers,
// health, in-flight counts) lives in `backends` and is shared by every generation of the stack
// and by every route. Retry budgets live here, one per distinct budget setting, shared by the
// routes that have it. Rate-limit buckets live in `rateLimits`, per route, kept while the
// route's rateLimit stays the same.

export function buildStack(config: Config, deps: StackDeps): Handler {
  const rateLimits = deps.rateLimits ?? new RateLimitTables(deps.clock)
  rateLimits.begin()
  const budgets = new Map<string, RetryBudget>()
  const budgetFor = (o: RetryBudgetOptions): RetryBudget => {
    const key = `${o.ratio} ${o.minPerSecond} ${o.windowMs}`
    let budget = budgets.get(key)
    if (!budget) budgets.set(key, (budget = new RetryBudget(o, deps.clock)))
    return budget
  }
  // tracing off: its two layers are not in the list at all
  const traced = config.tracing !== undefined && deps.tracing !== undefined ? { opts: config.tracing, deps: deps.tracing } : undefined
  const byRoute = new Map<string, Handler>([[DEFAULT_ROUTE, buildRoute(config, undefined, deps, budgetFor, rateLimits, traced)]])
  for (const route of config.routes) byRoute.set(route.name, buildRoute(config, route, deps, budgetFor, rateLimits, traced))
  rateLimits.commit()
  const top: Layer[] = [
    createRespondLayer(), //                                   errors -> the catalogue's local reply
    createAccessLogLayer(config.log, deps), //                 one JSON line and the request metrics
    createRouteMatchLayer(config.routes), //                   first matching route's name on the context
    ...(traced ? [createTracingLayer(traced.opts, traced.deps)] : []), // traceparent in, sampling, the SERVER span
  ]
  return compose(top, (req, ctx, reply) => byRoute.get(ctx.route)!(req, ctx, reply))
}

type Traced = { opts: NonNullable<Config['tracing']>; deps: NonNullable<StackDeps['tracing']> } | undefined

/** One route's layers below the match, its settings over the top level's (`route` undefined:
 *  the default route, the top level itself). */
function buildRoute(
  config: Config,
  route: RouteConfig | undefined,
  deps: StackDeps,
  budgetFor: (o: RetryBudgetOptions) => RetryBudget,
  rateLimits: RateLimitTables,
  traced: Traced,
): Handler {
  const { backends } = deps
  const limits = { ...config.limits, maxBodyBytes: route?.limits?.maxBodyBytes ?? config.limits.maxBodyBytes }
  const retry = routeRetry(config.retry, route?.retry)
  const requestTimeoutMs = route?.timeoutMs ?? config.limits.requestTimeoutMs // 0: none
  const weights = route?.weights
  const direct = route?.direct
  const rateLimit = route?.rateLimit
  const fault = routeSetting(config.fault, route?.fault)
  const mirror = routeSetting(config.mirror, route?.mirror)
  const layers: Layer[] = [
    createLimitsLayer(limits, deps), //                        header count 431, body size 413
  ]
  // token buckets per route, client or header value: 429 rate_limited (no rateLimit: not in the list)
  if (rateLimit) layers.push(createRateLimitLayer(rateLimit, { ...deps, buckets: rateLimits.get(route.name, rateLimit) }))
  // delays and aborts on purpose, before any body is read (no fault: not in the list)
  if (fault) {
    const maxAskedDelayMs = Math.min(MAX_ASKED_DELAY_MS, requestTimeoutMs > 0 ? requestTimeoutMs : MAX_ASKED_DELAY_MS)
    layers.push(createFaultLayer(fault, { ...deps, route: route?.name ?? DEFAULT_ROUTE, maxAskedDelayMs }))
  }
  // a fixed answer: the request goes no further than the proxy
  if (direct) {
    const body = Buffer.from(direct.body)
    return compose(layers, (_req, ctx, reply) => reply.ok(directReply(direct.status, body, ctx.id)))
  }
  layers.push(createReceiveLayer(limits, deps)) //            small bodies received whole first; idle bodies 408
  // a copy to a shadow backend, straight to its pool: never retried, never holds the real
  // request back (no mirror: not in the list)
  if (mirror) {
    const shadow = mirror.backend
    layers.push(
      createMirrorLayer(
        { ...mirror, maxBodyBytes: retry.maxReplayBytes, timeoutMs: requestTimeoutMs > 0 ? requestTimeoutMs : config.limits.requestTimeoutMs },
        { ...deps, send: (req, signal) => backends.get(shadow)?.upstream.shadow(req, signal) },
      ),
    )
  }
  layers.push(
    createRetryLayer({ ...retry, requestTimeoutMs }, { ...deps, budget: budgetFor(retry.budget) }), // budgeted tries
    // ---- below here: once per attempt ----
    ...(traced ? [createAttemptSpanLayer(config.backends, traced.deps)] : []), // the app's traceparent, a CLIENT span per attempt
    createPickLayer(
      // a route's weights: backends it leaves out get none, and the override header cannot
      // overrule them (a route that keeps /admin off the canary keeps it off)
      weights ? config.backends.map((b) => ({ name: b.name, weight: weights[b.name] ?? 0 })) : config.backends,
      weights ? { ...config.routing, header: false } : { ...config.routing, canary: defaultCanary(config) ?? false },
      backends,
    ), //                                                      header, sticky cookie, weights; skips open/unhealthy
    createOverloadLayer(limits, { ...deps, gateOf: (name) => backends.get(name)?.gate }), // per backend: in flight + waiting, else 503
    createBreakerLayer((name) => backends.get(name)?.breaker), // per backend: counts attempts
  )
  return compose(layers, backends.handler()) //                  undici Pool per backend
}
