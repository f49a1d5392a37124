// Backend pick: a weighted random choice made per request (not per connection, so one
// long-lived keep-alive connection is still split). Weight 0 is never picked; a single non-zero
// weight takes all traffic. The canary work extends this layer (header override, sticky cookie,
// skipping unhealthy backends). Backends whose circuit breaker is open are skipped while another
// is available.
import type { Layer } from '../pipeline/types.js'

export interface WeightedBackend {
  name: string
  weight: number
}

export interface PickDeps {
  random?: () => number
  /** False for a backend to avoid (its circuit breaker is open). When every backend is to be
   *  avoided the pick is made among all of them and the breaker answers for itself. */
  isAvailable?: (backend: string) => boolean
}

export function createPickLayer(backends: readonly WeightedBackend[], deps: PickDeps = {}): Layer {
  const random = deps.random ?? Math.random
  const isAvailable = deps.isAvailable ?? (() => true)
  const live = backends.filter((b) => b.weight > 0)
  const weighted = (among: readonly WeightedBackend[]): string => {
    if (among.length === 1) return among[0]!.name
    let r = random() * among.reduce((sum, b) => sum + b.weight, 0)
    for (const b of among) {
      if (r < b.weight) return b.name
      r -= b.weight
    }
    return among[among.length - 1]!.name // r == total only through float rounding
  }
  const pick = (): string => {
    if (live.every((b) => isAvailable(b.name))) return weighted(live)
    const available = live.filter((b) => isAvailable(b.name))
    return weighted(available.length > 0 ? available : live)
  }
  return (next) => (req, ctx) => {
    ctx.backend = pick()
    return next(req, ctx)
  }
}
