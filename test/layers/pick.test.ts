import t from 'tap'
import { createPickLayer } from '../../src/layers/pick.js'
import { context, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

async function picks(backends: Array<{ name: string; weight: number }>, randoms: number[]): Promise<string[]> {
  const queue = [...randoms]
  const layer = createPickLayer(backends, { random: () => queue.shift()! })
  const out: string[] = []
  for (let i = 0; i < randoms.length; i++) {
    const ctx = context()
    await layer(scripted(response()))(proxyRequest(), ctx)
    out.push(ctx.backend!)
  }
  return out
}

t.test('weighted pick per request, boundaries exact', async (t) => {
  const split = [{ name: 'app', weight: 90 }, { name: 'canary', weight: 10 }]
  t.same(await picks(split, [0, 0.5, 0.8999, 0.9, 0.9999]), ['app', 'app', 'app', 'canary', 'canary'])
})

t.test('weight 0 is never picked; a single non-zero weight takes everything', async (t) => {
  const zero = [{ name: 'app', weight: 100 }, { name: 'canary', weight: 0 }]
  t.same(await picks(zero, [0, 0.5, 0.99999999]), ['app', 'app', 'app'])
  const first = [{ name: 'off', weight: 0 }, { name: 'on', weight: 7 }]
  t.same(await picks(first, [0, 0.999]), ['on', 'on'])
})

t.test('any total works, and a rounding edge never falls off the end', async (t) => {
  const three = [{ name: 'a', weight: 1 }, { name: 'b', weight: 1 }, { name: 'c', weight: 1 }]
  t.same(await picks(three, [0.1, 0.5, 0.9, 1]), ['a', 'b', 'c', 'c'])
})

t.test('with real randomness the split follows the weights', async (t) => {
  const layer = createPickLayer([{ name: 'app', weight: 75 }, { name: 'canary', weight: 25 }])
  const counts: Record<string, number> = { app: 0, canary: 0 }
  for (let i = 0; i < 20_000; i++) {
    const ctx = context()
    await layer(scripted(response()))(proxyRequest(), ctx)
    counts[ctx.backend!]!++
  }
  // 25% of 20,000 = 5,000; the standard deviation is about 61, so +-400 is > 6 sigma
  t.ok(Math.abs(counts.canary! - 5000) < 400, `canary got ${counts.canary}`)
})
