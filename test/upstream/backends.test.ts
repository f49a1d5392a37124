// Every backend's state in one owner: pool, breaker, health loop and gate, synced on reload by one
// diff, part by part. Real pools against fake apps on loopback; time on the fake clock.
import type { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { validateConfig } from '../../src/config/load.js'
import type { BackendHealth } from '../../src/upstream/health.js'
import { Backends } from '../../src/upstream/backends.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, metricValue, promised, proxyRequest, textOf, through } from '../fixtures/pipeline.js'
import { fakeUpstream, type RunningUpstream } from '../fixtures/upstream.js'
import { within } from '../fixtures/client.js'

const CHECK = { path: '/', intervalMs: 1000, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 1 }
const BREAKER = { errorThresholdPercentage: 50, volumeThreshold: 2, rollingWindowMs: 10_000, resetTimeoutMs: 60_000 }

function config(backends: Array<{ name: string; url: string; healthCheck?: object }>, circuitBreaker = BREAKER) {
  return validateConfig({ backends: backends.map((b) => ({ healthCheck: CHECK, ...b })), circuitBreaker })
}

async function setup(t: Test, apps: number) {
  const ups: RunningUpstream[] = []
  for (let i = 0; i < apps; i++) ups.push(await fakeUpstream().seq('/fail', 502).listen())
  const d = deps()
  const clock = fakeClock()
  const verdicts: Array<[string, BackendHealth, boolean]> = []
  let backends: Backends | undefined
  const make = (c: ReturnType<typeof config>) => {
    backends = new Backends(c, { ...d, clock, onHealth: (name, h, changed) => verdicts.push([name, h, changed]) })
    return backends
  }
  t.teardown(async () => {
    await backends?.close()
    await Promise.all(ups.map((u) => u.close()))
  })
  const send = async (b: Backends, backend: string, path = '/') => {
    const res = await promised(b.handler())(proxyRequest({ path }), context({ backend }))
    await textOf(res.body as Readable)
    return res.status
  }
  /** Until every backend named has had `n` checks. */
  const checked = async (b: Backends, names: string[], n = 1) => {
    for (let i = 0; i < 200 && !names.every((name) => (b.snapshot(name)?.health.checks ?? 0) >= n); i++) await new Promise((resolve) => setTimeout(resolve, 5))
  }
  return { ups, d, clock, verdicts, make, send, checked }
}

t.test('a reload keeps what it does not change: pool connection, breaker state, health verdict, gate', async (t) => {
  const { ups, d, clock, make, send, checked } = await setup(t, 2)
  const [a, b] = ups as [RunningUpstream, RunningUpstream]
  const backends = make(config([{ name: 'app', url: a.url }, { name: 'canary', url: b.url }]))
  backends.start()
  await checked(backends, ['app', 'canary'])
  t.equal(backends.isHealthy('app'), true)
  await send(backends, 'app')
  await send(backends, 'canary')
  for (let i = 0; i < 2; i++) await through(backends.get('canary')!.breaker, async () => ({ status: 502, headers: {}, body: null }))
  t.equal(backends.snapshot('canary')!.breaker, 'open')
  const gate = backends.get('app')!.gate

  // Only a weight changes: nothing is rebuilt.
  backends.sync(config([{ name: 'app', url: a.url, weight: 50 } as never, { name: 'canary', url: b.url }]))
  await send(backends, 'app')
  t.equal(a.seen[1]!.remotePort, a.seen[0]!.remotePort, 'the pool kept its connection')
  t.equal(backends.snapshot('canary')!.breaker, 'open', 'the open breaker stays open')
  t.equal(backends.isAvailable('canary'), false, 'and keeps its backend out of the pick')
  t.equal(backends.get('app')!.gate, gate, 'the gate is the same one')
  t.equal(backends.isHealthy('app'), true, 'the verdict stays')

  // New breaker settings: a fresh closed breaker for everyone.
  backends.sync(config([{ name: 'app', url: a.url }, { name: 'canary', url: b.url }], { ...BREAKER, volumeThreshold: 10 }))
  t.equal(backends.snapshot('canary')!.breaker, 'closed')

  // New check settings on the same url: the loop restarts, the verdict is kept.
  const before = a.healthChecks()
  backends.sync(config([{ name: 'app', url: a.url, healthCheck: { ...CHECK, intervalMs: 100, timeoutMs: 100 } }, { name: 'canary', url: b.url }]))
  t.equal(backends.isHealthy('app'), true, 'kept while the new loop makes its first check')
  await checked(backends, ['app'], 2)
  clock.advance(100)
  for (let i = 0; i < 200 && a.healthChecks() < before + 2; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  t.ok(a.healthChecks() >= before + 2, 'checked at once, then at the new 100 ms interval')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 1)
})

t.test('a new url is a new app: a new pool, unhealthy until checked; a removed backend is taken down', async (t) => {
  const { ups, d, make, send, checked, verdicts } = await setup(t, 3)
  const [a, b, c] = ups as [RunningUpstream, RunningUpstream, RunningUpstream]
  const backends = make(config([{ name: 'app', url: a.url }, { name: 'canary', url: b.url }]))
  backends.start()
  await checked(backends, ['app', 'canary'])
  await send(backends, 'app')
  await send(backends, 'canary')

  backends.sync(config([{ name: 'app', url: c.url }]))
  t.equal(backends.isHealthy('app'), false, 'a new url starts unhealthy')
  t.equal(backends.get('canary'), undefined, 'the removed backend is gone')
  t.equal(backends.isAvailable('canary'), false, 'and never picked')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'canary' }), undefined, 'its breaker gauge removed')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'canary' }), undefined, 'its health gauge removed')
  await t.rejects(promised(backends.handler())(proxyRequest(), context({ backend: 'canary' })), { code: 'no_backend' }, 'an attempt picked before the reload')
  await within(b.seen[0]!.closed, 2000, "the removed backend's idle connection closing")
  t.pass("the removed backend's idle connection was closed")
  await checked(backends, ['app'])
  t.equal(backends.isHealthy('app'), true, 'checked at once')
  await send(backends, 'app')
  t.equal(c.seen.length, 1, 'the new pool goes to the new url')
  await within(a.seen[0]!.closed, 2000, "the old pool's connection closing")
  t.pass("the old pool's connection was closed")
  t.ok(verdicts.some(([name, h, changed]) => name === 'app' && h.healthy && changed), 'readiness hears the verdict')
})

t.test('a backend passing its health checks again closes its open breaker', async (t) => {
  const { ups, make, checked } = await setup(t, 1)
  const backends = make(config([{ name: 'app', url: ups[0]!.url, healthCheck: { ...CHECK, path: '/fail' } }]))
  backends.start()
  await checked(backends, ['app'])
  t.equal(backends.isHealthy('app'), false)
  for (let i = 0; i < 2; i++) await through(backends.get('app')!.breaker, async () => ({ status: 502, headers: {}, body: null }))
  t.equal(backends.snapshot('app')!.breaker, 'open')
  backends.sync(config([{ name: 'app', url: ups[0]!.url }])) // now checks `/`, which answers 200
  await checked(backends, ['app'], 2)
  t.equal(backends.isHealthy('app'), true)
  t.equal(backends.snapshot('app')!.breaker, 'closed', 'closed without waiting out resetTimeoutMs (60 s)')
})
