import t from 'tap'
import { HealthCheck, statusExpected, type BackendHealth } from '../../src/upstream/health.js'
import type { ProbeResult } from '../../src/upstream/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { deps, metricValue } from '../fixtures/pipeline.js'

const CHECK = { path: '/healthz', intervalMs: 1000, timeoutMs: 500, healthyThreshold: 2, unhealthyThreshold: 3, expectedStatuses: [200, '300-399'] }

function setup(results: ProbeResult[]) {
  const d = deps()
  const clock = fakeClock()
  const changes: Array<[string, BackendHealth]> = []
  const probes: Array<[string, number]> = []
  const checker = new HealthCheck('app', CHECK, {
    clock,
    logger: d.logger,
    metrics: d.metrics,
    probe: async (check) => {
      probes.push([check.path, check.timeoutMs])
      return results.shift() ?? { ok: false, error: 'internal', detail: 'script ran out' }
    },
    onCheck: (h) => changes.push(['app', h]),
  })
  return { d, clock, checker, changes, probes }
}

const ok = (status = 200): ProbeResult => ({ ok: true, status })
const refused: ProbeResult = { ok: false, error: 'upstream_refused', detail: 'connect ECONNREFUSED' }

t.test('a backend starts unhealthy and turns healthy after healthyThreshold passes', async (t) => {
  const { checker, changes, d, probes } = setup([ok(), ok(302)])
  t.equal(checker.healthy, false, 'unhealthy until checked')
  t.same(checker.health(), { healthy: false, reason: 'not checked yet', checks: 0, lastCheckPassed: false })
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 0)
  await checker.check()
  t.equal(checker.healthy, false, 'one pass of two')
  await checker.check()
  t.equal(checker.healthy, true)
  t.same(changes, [
    ['app', { healthy: false, reason: 'GET /healthz answered 200', checks: 1, lastCheckPassed: true }],
    ['app', { healthy: true, reason: 'GET /healthz answered 302', checks: 2, lastCheckPassed: true }],
  ], 'told after every check')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 1)
  t.same(probes[0], ['/healthz', 500])
  t.match(d.lines, [{ level: 'info', msg: 'backend healthy', backend: 'app', reason: 'GET /healthz answered 302' }])
})

t.test('flaps honour the thresholds: unhealthy only after unhealthyThreshold failures in a row', async (t) => {
  const { checker, changes, d } = setup([ok(), ok(), refused, ok(503), ok(), refused, ok(500), refused, ok(), ok()])
  for (let i = 0; i < 2; i++) await checker.check()
  t.equal(checker.healthy, true)
  for (let i = 0; i < 3; i++) await checker.check() // refused, 503, 200: the run is broken
  t.equal(checker.healthy, true, 'two failures then a pass: still healthy')
  for (let i = 0; i < 3; i++) await checker.check() // refused, 500, refused
  t.equal(checker.healthy, false, 'three in a row: unhealthy')
  t.match(checker.health(), { healthy: false, reason: /failed: upstream_refused: connect ECONNREFUSED/ })
  await checker.check()
  t.equal(checker.healthy, false, 'one pass of the two needed')
  await checker.check()
  t.equal(checker.healthy, true)
  // ok, ok, refused, 503, ok, refused, 500, refused, ok, ok
  t.equal(await metricValue(d, 'sidecar_health_checks_total', { backend: 'app', result: 'success' }), 5, 'every check counted: passes')
  t.equal(await metricValue(d, 'sidecar_health_checks_total', { backend: 'app', result: 'failure' }), 2, 'answers not expected (503, 500)')
  t.equal(await metricValue(d, 'sidecar_health_checks_total', { backend: 'app', result: 'error' }), 3, 'no answer (refused)')
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
})

t.test('expected statuses: codes and ranges', async (t) => {
  t.ok(statusExpected(200, ['200-399']))
  t.ok(statusExpected(399, ['200-399']))
  t.notOk(statusExpected(400, ['200-399']))
  t.ok(statusExpected(418, [200, 418]))
  t.notOk(statusExpected(500, [200, '300-399']))
})

t.test('a replacing check carries the verdict over; a check that returns after its loop stopped is dropped', async (t) => {
  let answer!: (r: ProbeResult) => void
  const d = deps()
  const first = new HealthCheck('app', { ...CHECK, healthyThreshold: 1 }, { clock: fakeClock(), logger: d.logger, metrics: d.metrics, probe: async () => ok() })
  await first.check()
  t.equal(first.healthy, true)
  const next = new HealthCheck('app', { ...CHECK, intervalMs: 100 }, { clock: fakeClock(), logger: d.logger, metrics: d.metrics, probe: () => new Promise((resolve) => (answer = resolve)) }, first)
  t.same(next.health(), { healthy: true, reason: 'GET /healthz answered 200', checks: 1, lastCheckPassed: true }, 'new settings, same verdict')
  t.equal(await metricValue(d, 'sidecar_backend_healthy', { backend: 'app' }), 1, 'and the gauge is left as it was')
  const pending = next.check()
  next.stop()
  answer(refused)
  await pending
  t.equal(next.health().checks, 1, 'the late answer changed nothing')
})

t.test('an app that is not there at start is said once, at the first check, not at every one', async (t) => {
  const { checker, d } = setup([refused, refused, refused, ok(), ok()])
  for (let i = 0; i < 3; i++) await checker.check()
  t.match(d.lines.filter((l) => l.msg === 'backend unhealthy'), [{ level: 'warn', backend: 'app', reason: /upstream_refused/ }], 'one warning for three failures')
  for (let i = 0; i < 2; i++) await checker.check()
  t.match(d.lines.filter((l) => l.msg === 'backend healthy'), [{ level: 'info', backend: 'app' }], 'and one line when it comes up')
})
