// Circuit breaker: each attempt runs through its backend's breaker (upstream/breaker.ts, where
// the state lives). This layer sits below retry and the backend pick, so the breaker counts
// attempts, and an open one fails the attempt at once (503 circuit_open) for the retry layer to
// pick again.
import type { Handler, Layer, ProxyRequest, Reply, RequestContext } from '../pipeline/types.js'

export interface BreakerRunner {
  run(next: Handler, req: ProxyRequest, ctx: RequestContext, reply: Reply): void
}

/** `breakerOf`: the backend's breaker (none: the backend is gone, the attempt goes through). */
export function createBreakerLayer(breakerOf: (backend: string) => BreakerRunner | undefined): Layer {
  return (next) => (req, ctx, reply) => {
    const breaker = breakerOf(ctx.backend!)
    if (breaker) breaker.run(next, req, ctx, reply)
    else next(req, ctx, reply)
  }
}
