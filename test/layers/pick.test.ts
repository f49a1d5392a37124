import t from 'tap'
import { createPickLayer, type PickDeps, type RoutingOptions } from '../../src/layers/pick.js'
import type { HeaderMap } from '../../src/pipeline/types.js'
import { context, drive, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

const SPLIT = [
  { name: 'app', weight: 90 },
  { name: 'canary', weight: 10 },
]
const ROUTING: RoutingOptions = { header: 'x-canary' }

/** One request through the pick layer: the backend picked and the response headers. */
async function pickOne(
  backends: Array<{ name: string; weight: number }>,
  opts: { routing?: RoutingOptions; deps?: PickDeps; headers?: HeaderMap; responseHeaders?: HeaderMap } = {},
): Promise<{ backend: string; headers: HeaderMap }> {
  const layer = drive(createPickLayer(backends, opts.routing ?? ROUTING, opts.deps))
  const ctx = context()
  const res = await layer(scripted({ status: 200, headers: { ...opts.responseHeaders }, body: null }))(proxyRequest({ headers: opts.headers ?? {} }), ctx)
  return { backend: ctx.backend!, headers: res.headers }
}

async function picks(backends: Array<{ name: string; weight: number }>, randoms: number[], deps: PickDeps = {}): Promise<string[]> {
  const queue = [...randoms]
  const out: string[] = []
  for (let i = 0; i < randoms.length; i++) out.push((await pickOne(backends, { deps: { ...deps, random: () => queue.shift()! } })).backend)
  return out
}

/** Pearson's chi-square statistic of observed counts against expected shares. */
function chiSquare(observed: number[], shares: number[]): number {
  const n = observed.reduce((a, b) => a + b, 0)
  return observed.reduce((sum, o, i) => sum + (o - n * shares[i]!) ** 2 / (n * shares[i]!), 0)
}

t.test('weighted pick per request, boundaries exact', async (t) => {
  t.same(await picks(SPLIT, [0, 0.5, 0.8999, 0.9, 0.9999]), ['app', 'app', 'app', 'canary', 'canary'])
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

t.test('with real randomness the split passes a chi-square test', async (t) => {
  const layer = drive(createPickLayer([{ name: 'app', weight: 75 }, { name: 'canary', weight: 25 }], ROUTING))
  const counts: Record<string, number> = { app: 0, canary: 0 }
  for (let i = 0; i < 20_000; i++) {
    const ctx = context()
    await layer(scripted(response()))(proxyRequest(), ctx)
    counts[ctx.backend!]!++
  }
  // 1 degree of freedom: above 10.83 happens by chance once in 1,000 runs
  const chi = chiSquare([counts.app!, counts.canary!], [0.75, 0.25])
  t.ok(chi < 10.83, `chi-square ${chi.toFixed(2)} for ${JSON.stringify(counts)}`)
})

t.test('open breakers and failed health checks take a backend out of the weighted pick', async (t) => {
  const open = new Set<string>()
  const sick = new Set<string>()
  const deps = { isAvailable: (b: string) => !open.has(b), isHealthy: (b: string) => !sick.has(b) }
  open.add('app')
  t.same(await picks(SPLIT, [0, 0.5], deps), ['canary', 'canary'], 'breaker open: the other one')
  open.clear()
  sick.add('canary')
  t.same(await picks(SPLIT, [0.95, 0.99], deps), ['app', 'app'], 'unhealthy: the other one')
  sick.add('app')
  t.same(await picks(SPLIT, [0.5, 0.95], deps), ['app', 'canary'], 'all unhealthy: the weights decide (panic mode)')
  open.add('canary')
  t.same(await picks(SPLIT, [0.95], deps), ['app'], 'all unhealthy, one open: the one that is only unhealthy')
  open.add('app')
  t.same(await picks(SPLIT, [0.5, 0.95], deps), ['app', 'canary'], 'every breaker open: the weights, and the breaker answers')
})

t.test('the override header forces a side, whatever the weights and health', async (t) => {
  const all = [{ name: 'app', weight: 100 }, { name: 'canary', weight: 0 }]
  t.equal((await pickOne(all, { headers: { 'x-canary': 'always' } })).backend, 'canary', 'always: even at weight 0')
  t.equal((await pickOne([{ name: 'app', weight: 0 }, { name: 'canary', weight: 100 }], { headers: { 'x-canary': 'never' } })).backend, 'app')
  const sick = { isHealthy: (b: string) => b !== 'canary' }
  t.equal((await pickOne(SPLIT, { headers: { 'x-canary': 'always' }, deps: sick })).backend, 'canary', 'even when unhealthy')
  const random = () => 0.99
  t.equal((await pickOne(SPLIT, { headers: { 'x-canary': 'maybe' }, deps: { random } })).backend, 'canary', 'unknown value: weights')
  t.equal((await pickOne(SPLIT, { headers: { 'x-canary': ['never', 'never'] }, deps: { random } })).backend, 'canary', 'repeated: weights')
})

t.test('the override header: its name, the canary it means, and turned off', async (t) => {
  const three = [{ name: 'stable', weight: 1 }, { name: 'b', weight: 0 }, { name: 'c', weight: 0 }]
  t.equal((await pickOne(three, { headers: { 'x-canary': 'always' } })).backend, 'b', 'default: the second backend')
  t.equal((await pickOne(three, { routing: { header: 'x-canary', canary: 'c' }, headers: { 'x-canary': 'always' } })).backend, 'c')
  t.equal((await pickOne(three, { routing: { header: 'x-side' }, headers: { 'x-side': 'always' } })).backend, 'b', 'renamed')
  t.equal((await pickOne(three, { routing: { header: false }, headers: { 'x-canary': 'always' } })).backend, 'stable', 'off')
  t.equal((await pickOne([{ name: 'only', weight: 1 }], { headers: { 'x-canary': 'always' } })).backend, 'only', 'no canary: ignored')
})

t.test('sticky cookie: set on the first pick, then honoured while the backend is usable', async (t) => {
  const routing = { header: 'x-canary' as const, sticky: { cookie: 'side', maxAgeSeconds: 60 } }
  const first = await pickOne(SPLIT, { routing, deps: { random: () => 0.95 } })
  t.equal(first.backend, 'canary')
  t.equal(first.headers['set-cookie'], 'side=canary; Path=/; Max-Age=60; HttpOnly; SameSite=Lax')

  const again = await pickOne(SPLIT, { routing, deps: { random: () => 0 }, headers: { cookie: 'a=1; side=canary; b=2' } })
  t.equal(again.backend, 'canary', 'the cookie wins over the weights')
  t.equal(again.headers['set-cookie'], undefined, 'no cookie set again')

  const h2 = await pickOne(SPLIT, { routing, deps: { random: () => 0 }, headers: { cookie: ['a=1', 'side=canary'] } })
  t.equal(h2.backend, 'canary', 'HTTP/2 may send several cookie headers')

  const rolledBack = [{ name: 'app', weight: 100 }, { name: 'canary', weight: 0 }]
  const moved = await pickOne(rolledBack, { routing, headers: { cookie: 'side=canary' } })
  t.equal(moved.backend, 'app', 'weight 0 now: the client moves')
  t.equal(moved.headers['set-cookie'], 'side=app; Path=/; Max-Age=60; HttpOnly; SameSite=Lax')

  const open = await pickOne(SPLIT, { routing, deps: { random: () => 0, isAvailable: (b) => b !== 'canary' }, headers: { cookie: 'side=canary' } })
  t.equal(open.backend, 'app', 'breaker open: the client moves')

  const unknown = await pickOne(SPLIT, { routing, deps: { random: () => 0 }, headers: { cookie: 'side=gone' } })
  t.equal(unknown.backend, 'app', 'a backend that does not exist: the weights')
  const other = await pickOne(SPLIT, { routing, deps: { random: () => 0.95 }, headers: { cookie: 'sidex=app; =x; side' } })
  t.equal(other.backend, 'canary', 'other cookies and malformed pairs: the weights')

  const kept = await pickOne(SPLIT, { routing, deps: { random: () => 0 }, responseHeaders: { 'set-cookie': 'app=1' } })
  t.same(kept.headers['set-cookie'], ['app=1', 'side=app; Path=/; Max-Age=60; HttpOnly; SameSite=Lax'], "the app's own cookies stay")

  const forced = await pickOne(SPLIT, { routing, headers: { 'x-canary': 'always' } })
  t.equal(forced.headers['set-cookie'], undefined, 'a forced request does not stick the client')
})
