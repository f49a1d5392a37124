// The adaptive concurrency limit as a state machine on the fake clock: latency samples in, the
// limit out. It measures the unloaded latency with the limit pinned to `min`, grows while
// latency stays flat and the limit is used, shrinks when latency rises past the tolerance,
// measures the minimum again on schedule (with jitter) and gives the limit back afterwards.
import t from 'tap'
import { AdaptiveLimit, percentile, type AdaptiveConcurrencyOptions } from '../../src/upstream/concurrency.js'
import { fakeClock } from '../fixtures/clock.js'
import { deps } from '../fixtures/pipeline.js'
import { Gate } from '../../src/upstream/gate.js'

const OPTS: AdaptiveConcurrencyOptions = { min: 3, max: 200, sampleWindowMs: 100, percentile: 0.5, tolerance: 0.25, minRttIntervalMs: 60_000, minRttRequests: 10, jitter: 0.1 }

function setup(opts: Partial<AdaptiveConcurrencyOptions> = {}, random = () => 0.5) {
  const clock = fakeClock()
  const changes: Array<[number, number]> = []
  const limit = new AdaptiveLimit({ ...OPTS, ...opts }, { clock, random, onChange: (now, before) => changes.push([before, now]) })
  t.teardown(() => limit.stop())
  /** `n` samples of `ms` each, with the limit fully used, then the window closes. */
  const window = (ms: number, n = 20, inFlight = limit.limit) => {
    for (let i = 0; i < n; i++) limit.sample(ms, inFlight)
    clock.advance(OPTS.sampleWindowMs)
  }
  return { clock, limit, changes, window }
}

t.test('starts pinned to min, measuring the unloaded latency; after minRttRequests samples it adapts', async (t) => {
  const { limit, changes } = setup()
  t.equal(limit.limit, 3)
  t.match(limit.state(), { phase: 'measuring', minRttMs: undefined })
  for (let i = 0; i < 9; i++) limit.sample(10 + i, 3)
  t.equal(limit.state().phase, 'measuring', 'nine samples of ten')
  limit.sample(30, 3)
  t.match(limit.state(), { phase: 'adapting', minRttMs: 14 }, 'the median of the ten: 10..18 and 30')
  t.same(changes, [], 'given back the limit it had (min): nothing moved yet')
})

t.test('flat latency, limit used: it grows by its square root each window, up to max', async (t) => {
  const { limit, window } = setup()
  for (let i = 0; i < 10; i++) limit.sample(10, 3)
  window(10)
  // gradient = 10 * 1.25 / 10 = 1.25: 3 * 1.25 = 3.75, + sqrt(3.75) = 5.69 -> 6
  t.equal(limit.limit, 6)
  window(10)
  t.equal(limit.limit, 10, '6 * 1.25 = 7.5 + 2.74 -> 10')
  for (let i = 0; i < 30; i++) window(10)
  t.equal(limit.limit, 200, 'capped at max')
})

t.test('a limit not half used does not grow (an idle app proves nothing about its capacity); it may still shrink', async (t) => {
  const { limit, window } = setup({ min: 40 })
  for (let i = 0; i < 10; i++) limit.sample(10, 5)
  window(10, 20, 19)
  t.equal(limit.limit, 40, '19 in flight of 40: not grown')
  window(100, 20, 5)
  t.equal(limit.limit, 40, 'at min it cannot shrink further')
})

t.test('latency past the tolerance shrinks the limit, by half at most per window; never below min', async (t) => {
  const { limit, window, changes } = setup()
  for (let i = 0; i < 10; i++) limit.sample(10, 3)
  for (let i = 0; i < 12; i++) window(10)
  const grown = limit.limit
  t.ok(grown >= 100, `grown to ${grown}`)
  window(12) // 20% slower: within the 25% tolerance
  t.ok(limit.limit >= grown, 'within the tolerance: not shrunk')
  const before = limit.limit
  window(100) // ten times slower: gradient 0.125, clamped to 0.5
  t.equal(limit.limit, Math.round(before * 0.5 + Math.sqrt(before * 0.5)), 'halved (plus the headroom)')
  for (let i = 0; i < 20; i++) window(100)
  t.equal(limit.limit, 3, 'down to min, not below')
  t.ok(changes.length > 10, 'each move told')
})

t.test('the app slows down 2x: the limit falls, and comes back once the minimum is measured again', async (t) => {
  const { limit, window, clock } = setup({ max: 1000 })
  for (let i = 0; i < 10; i++) limit.sample(20, 3)
  // a steady app of capacity ~40: latency grows once more than 40 are in flight
  const latency = (inFlight: number, base: number) => (inFlight <= 40 ? base : (base * inFlight) / 40)
  const run = (base: number, windows: number) => {
    for (let i = 0; i < windows; i++) window(latency(limit.limit, base))
  }
  run(20, 50)
  const settled = limit.limit
  t.ok(settled >= 30 && settled <= 80, `settles near the app's capacity: ${settled}`)
  run(40, 50) // twice as slow at every load: against the old minimum it looks loaded
  t.ok(limit.limit < settled / 2, `slowed down: the limit falls (${limit.limit})`)
  clock.advance(60_000) // the next measurement of the minimum is due
  t.equal(limit.state().phase, 'measuring')
  for (let i = 0; i < 10; i++) limit.sample(latency(3, 40), 3)
  t.equal(limit.state().minRttMs, 40, 'the new unloaded latency')
  run(40, 50)
  t.ok(limit.limit >= 30 && limit.limit <= 80, `and the limit back near the app's capacity: ${limit.limit}`)
})

t.test('the minimum is measured again every minRttIntervalMs (with jitter): pinned to min meanwhile, the limit given back after', async (t) => {
  const { limit, window, clock } = setup({}, () => 1) // +10% jitter
  for (let i = 0; i < 10; i++) limit.sample(10, 3)
  for (let i = 0; i < 8; i++) window(10)
  const before = limit.limit
  clock.advance(60_000 * 1.1 - 8 * OPTS.sampleWindowMs - 1)
  t.equal(limit.state().phase, 'adapting', '1 ms before the jittered interval')
  clock.advance(1)
  t.match(limit.state(), { phase: 'measuring', limit: 3 }, 'measuring: pinned to min')
  for (let i = 0; i < 10; i++) limit.sample(20, 3)
  t.match(limit.state(), { phase: 'adapting', minRttMs: 20, limit: before }, 'the new minimum, and the limit given back')
})

t.test('settings changed by a reload: kept with the limit, clamped to the new bounds', async (t) => {
  const { limit, window } = setup()
  for (let i = 0; i < 10; i++) limit.sample(10, 3)
  for (let i = 0; i < 10; i++) window(10)
  t.ok(limit.limit > 50)
  limit.configure({ ...OPTS, max: 50 })
  t.equal(limit.limit, 50)
  t.equal(limit.state().minRttMs, 10, 'the minimum kept')
})

t.test('percentile: nearest rank', async (t) => {
  t.equal(percentile([5, 1, 4, 2, 3], 0.5), 3)
  t.equal(percentile([5, 1, 4, 2, 3], 1), 5)
  t.equal(percentile([5, 1, 4, 2, 3], 0.01), 1)
  t.equal(percentile([7], 0.9), 7)
})

t.test('the gate logs a move of its adaptive limit by more than half, never the pin while the minimum is measured', async (t) => {
  const d = deps()
  const clock = fakeClock()
  const gate = new Gate()
  gate.configure({ adaptive: { ...OPTS, minRttRequests: 2 }, maxWaitMs: 1000 }, { clock, logger: d.logger, random: () => 0.5 }, 'app')
  t.teardown(() => gate.limiter?.stop())
  const feed = (ms: number, windows: number) => {
    for (let w = 0; w < windows; w++) {
      for (let i = 0; i < 20; i++) gate.limiter!.sample(ms, gate.limit)
      clock.advance(OPTS.sampleWindowMs)
    }
  }
  gate.limiter!.sample(10, 3)
  gate.limiter!.sample(10, 3)
  feed(10, 3) // 3 -> 6 -> 10 -> 16
  const moved = () => d.lines.filter((l) => l.msg === 'concurrency limit moved')
  t.match(moved(), [{ backend: 'app', limit: 6, previous: 3 }, { limit: 10, previous: 6 }, { limit: 16, previous: 10 }], 'each step by more than half')
  t.equal(gate.limit, 16, 'the gate follows the limit')
  clock.advance(OPTS.minRttIntervalMs)
  t.equal(gate.limit, 3, 'pinned to min to measure')
  gate.limiter!.sample(10, 3)
  gate.limiter!.sample(10, 3)
  t.equal(gate.limit, 16, 'given back')
  t.equal(moved().length, 3, 'neither the pin nor its end logged')
})
