// Circuit breaker: each attempt runs through its backend's breaker (upstream/breaker.ts, where
// the state lives). This layer sits below retry and the backend pick, so the breaker counts
// attempts, and an open one fails the attempt at once (503 circuit_open) for the retry layer to
// pick again.
import type { Layer, ProxyResponse } from '../pipeline/types.js'

export interface BreakerRunner {
  run(attempt: () => Promise<ProxyResponse>): Promise<ProxyResponse>
}

/** `breakerOf`: the backend's breaker (none: the backend is gone, the attempt goes through). */
export function createBreakerLayer(breakerOf: (backend: string) => BreakerRunner | undefined): Layer {
  return (next) => (req, ctx) => {
    const breaker = breakerOf(ctx.backend!)
    return breaker ? breaker.run(() => next(req, ctx)) : next(req, ctx)
  }
}
