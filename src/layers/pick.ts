// Backend pick: a weighted random choice made per request (not per connection, so one
// long-lived keep-alive connection is still split). Weight 0 is never picked; a single non-zero
// weight takes all traffic. The canary work extends this layer (header override, sticky cookie,
// skipping unhealthy backends).
import type { Layer } from '../pipeline/types.js'

export interface WeightedBackend {
  name: string
  weight: number
}

export function createPickLayer(backends: readonly WeightedBackend[], deps: { random?: () => number } = {}): Layer {
  const random = deps.random ?? Math.random
  const live = backends.filter((b) => b.weight > 0)
  const total = live.reduce((sum, b) => sum + b.weight, 0)
  const pick = (): string => {
    if (live.length === 1) return live[0]!.name
    let r = random() * total
    for (const b of live) {
      if (r < b.weight) return b.name
      r -= b.weight
    }
    return live[live.length - 1]!.name // r == total only through float rounding
  }
  return (next) => (req, ctx) => {
    ctx.backend = pick()
    return next(req, ctx)
  }
}
