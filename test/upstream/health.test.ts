import t from 'tap'
import { HealthChecker, statusExpected, type BackendHealth } from '../../src/upstream/health.js'
import type { ProbeResult } from '../../src/upstream/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { deps, metricValue } from '../fixtures/pipeline.js'

const CHECK = { path: '/healthz', intervalMs: 1000, timeoutMs: 500, healthyThreshold: 2, unhealthyThreshold: 3, expectedStatuses: [200, '300-399'] }

function setup(results: ProbeResult[]) {
  const d = deps()
  const clock = fakeClock()
  const changes: Array<[string, BackendHealth]> = []
  const probes: Array<[string, string, number]> = []
  const checker = new HealthChecker([{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: CHECK }], {
    clock,
    logger: d.logger,
    metrics: d.metrics,
    probe: async (backend, path, timeoutMs) => {
      probes.push([backend, path, timeoutMs])
      return results.shift() ?? { ok: false, error: 'internal', detail: 'script ran out' }
    },
    onCheck: (backend, h) => changes.push([backend, h]),
  })
  return { d, clock, checker, changes, probes }
}

const ok = (status = 200): ProbeResult => ({ ok: true, status })
const refused: ProbeResult = { ok: false, error: 'upstream_refused', detail: 'connect ECONNREFUSED' }

t.test('a backend starts unhealthy and turns healthy after healthyThreshold passes', async (t) => {
  const { checker, changes, d, probes } = setup([ok(), ok(302)])
  t.equal(checker.isHealthy('app'), false, 'unhealthy until checked')
  t.same(checker.health('app'), { healthy: false, reason: 'not checked yet', checks: 0, lastCheckPassed: false })
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 0)
  await checker.check('app')
  t.equal(checker.isHealthy('app'), false, 'one pass of two')
  await checker.check('app')
  t.equal(checker.isHealthy('app'), true)
  t.same(changes, [
    ['app', { healthy: false, reason: 'GET /healthz answered 200', checks: 1, lastCheckPassed: true }],
    ['app', { healthy: true, reason: 'GET /healthz answered 302', checks: 2, lastCheckPassed: true }],
  ], 'told after every check')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 1)
  t.same(probes[0], ['app', '/healthz', 500])
  t.match(d.lines, [{ level: 'info', msg: 'backend healthy', backend: 'app', reason: 'GET /healthz answered 302' }])
})

t.test('flaps honour the thresholds: unhealthy only after unhealthyThreshold failures in a row', async (t) => {
  const { checker, changes, d } = setup([ok(), ok(), refused, ok(503), ok(), refused, ok(500), refused, ok(), ok()])
  for (let i = 0; i < 2; i++) await checker.check('app')
  t.equal(checker.isHealthy('app'), true)
  for (let i = 0; i < 3; i++) await checker.check('app') // refused, 503, 200: the run is broken
  t.equal(checker.isHealthy('app'), true, 'two failures then a pass: still healthy')
  for (let i = 0; i < 3; i++) await checker.check('app') // refused, 500, refused
  t.equal(checker.isHealthy('app'), false, 'three in a row: unhealthy')
  t.match(checker.health('app'), { healthy: false, reason: /failed: upstream_refused: connect ECONNREFUSED/ })
  await checker.check('app')
  t.equal(checker.isHealthy('app'), false, 'one pass of the two needed')
  await checker.check('app')
  t.equal(checker.isHealthy('app'), true)
  let previous = false // a backend starts unhealthy
  const flips = changes.map(([, h]) => h.healthy).filter((h) => {
    const flipped = h !== previous
    previous = h
    return flipped
  })
  t.same(flips, [true, false, true], 'exactly three changes')
  t.equal(d.lines.filter((l) => /^backend (un)?healthy$/.test(l.msg as string)).length, 3, 'each change logged once')
})

t.test('the loop checks every intervalMs until stopped', async (t) => {
  const { checker, clock, probes } = setup([ok(), ok(), ok(), ok()])
  checker.start()
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(probes.length, 1, 'the first check runs at once')
  clock.advance(999)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(probes.length, 1)
  clock.advance(1)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(probes.length, 2, 'the next one an interval later')
  checker.stop()
  clock.advance(10_000)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(probes.length, 2, 'none after stop')
  t.equal(checker.isHealthy('elsewhere'), true, 'an unchecked name is not held against anyone')
})

t.test('expected statuses: codes and ranges', async (t) => {
  t.ok(statusExpected(200, ['200-399']))
  t.ok(statusExpected(399, ['200-399']))
  t.notOk(statusExpected(400, ['200-399']))
  t.ok(statusExpected(418, [200, 418]))
  t.notOk(statusExpected(500, [200, '300-399']))
})

t.test('sync after a reload: new backends checked at once, removed ones forgotten, verdicts kept', async (t) => {
  const { checker, clock, probes, d } = setup([ok(), ok(), ok(), ok(), ok(), ok(), ok(), ok()])
  const tick = () => new Promise((resolve) => setImmediate(resolve))
  checker.start()
  await tick()
  t.equal(checker.isHealthy('app'), false, 'healthyThreshold 2: one pass is not enough')
  await checker.check('app')
  t.equal(checker.isHealthy('app'), true)

  const canary = { name: 'canary', url: 'http://127.0.0.1:2', healthCheck: { ...CHECK, path: '/c' } }
  checker.sync([{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: CHECK }, canary])
  await tick()
  t.same(probes.at(-1), ['canary', '/c', 500], 'the new backend is checked at once')
  t.equal(checker.isHealthy('canary'), false, 'and starts unhealthy')
  t.equal(checker.isHealthy('app'), true, 'an unchanged backend keeps its verdict')

  const faster = { ...CHECK, intervalMs: 100 }
  checker.sync([{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: faster }, canary])
  await tick()
  t.equal(checker.isHealthy('app'), true, 'new check settings keep the verdict')
  const before = probes.filter(([b]) => b === 'app').length
  clock.advance(100)
  await tick()
  t.equal(probes.filter(([b]) => b === 'app').length, before + 1, 'and check at the new interval')

  checker.sync([{ name: 'app', url: 'http://127.0.0.1:9', healthCheck: faster }])
  t.equal(checker.isHealthy('app'), false, 'a new url is a new backend: unhealthy until checked')
  t.equal(checker.health('canary'), undefined, 'a removed backend is forgotten')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'canary' }), undefined, 'and its gauge removed')
  const probesBefore = probes.length
  checker.stop()
  clock.advance(10_000)
  await tick()
  t.equal(probes.filter(([b]) => b === 'canary').length, 1, 'the removed loop never ran again')
  t.ok(probes.length - probesBefore <= 1, 'nothing after stop but a check already under way')
})

t.test('a check that finishes after its backend was replaced is dropped', async (t) => {
  let answer!: (r: ProbeResult) => void
  const d = deps()
  const checker = new HealthChecker([{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: { ...CHECK, healthyThreshold: 1 } }], {
    clock: fakeClock(),
    logger: d.logger,
    metrics: d.metrics,
    probe: () => new Promise((resolve) => (answer = resolve)),
  })
  const pending = checker.check('app')
  checker.sync([{ name: 'app', url: 'http://127.0.0.1:2', healthCheck: CHECK }])
  answer(ok())
  await pending
  t.same(checker.health('app'), { healthy: false, reason: 'not checked yet', checks: 0, lastCheckPassed: false }, 'the old url passing says nothing of the new one')
})
