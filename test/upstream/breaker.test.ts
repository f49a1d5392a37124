// One backend's breaker, on the fake clock: the rolling window and the resting period move only
// when the test advances time.
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createBreakerLayer } from '../../src/layers/breaker.js'
import { Breaker } from '../../src/upstream/breaker.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted, through, type Step } from '../fixtures/pipeline.js'

const OPTS = { errorThresholdPercentage: 50, volumeThreshold: 4, rollingWindowMs: 10_000, resetTimeoutMs: 150 }

function setup(steps: Step[], opts = OPTS) {
  const d = deps()
  const clock = fakeClock()
  const breaker = new Breaker('app', opts, { ...d, clock })
  const next = scripted(...steps)
  const handler = drive(createBreakerLayer((name) => (name === 'app' ? breaker : undefined)))(next)
  const call = (backend = 'app') => handler(proxyRequest(), context({ backend }))
  return { d, clock, breaker, next, call }
}

t.test('5xx and upstream errors open the breaker once volume and threshold are reached', async (t) => {
  const { breaker, next, call, d } = setup([response(500), new SidecarError('upstream_reset'), response(503), new SidecarError('upstream_timeout'), response(200)])
  t.teardown(() => breaker.shutdown())
  t.equal((await call()).status, 500, 'a 5xx is still the response the retry layer sees')
  await t.rejects(call(), { code: 'upstream_reset' })
  t.equal(breaker.state, 'closed', 'below volumeThreshold nothing opens')
  t.equal((await call()).status, 503)
  await t.rejects(call(), { code: 'upstream_timeout' })
  t.equal(breaker.state, 'open')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 2)

  const rejected = await call().catch((err: SidecarError) => err)
  t.match(rejected, { code: 'circuit_open', status: 503 })
  t.equal((rejected as SidecarError).retryAfterSeconds, 1, 'with a Retry-After (150 ms of rest left: at least 1 s)')
  t.equal(next.calls.length, 4, 'the backend got nothing while open')
  t.match(d.lines, [{ level: 'warn', msg: 'circuit breaker open', backend: 'app', state: 'open' }])
})

t.test('after resetTimeoutMs on the clock, half-open lets one probe through; success closes the breaker', async (t) => {
  const { breaker, next, call, d, clock } = setup([response(500), response(500), response(500), response(500), response(200), response(200)])
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 4; i++) await call()
  t.equal(breaker.state, 'open')
  clock.advance(149)
  t.equal(breaker.state, 'open', 'still resting 1 ms before resetTimeoutMs')
  clock.advance(1)
  t.equal(breaker.state, 'half-open')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 1)
  t.equal((await call()).status, 200)
  t.equal(breaker.state, 'closed')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 0)
  t.equal(next.calls.length, 5)
  const transitions = (await d.metrics.registry.getSingleMetric('sidecar_circuit_transitions_total')!.get()).values
  t.same(
    transitions.map((v) => [v.labels.from, v.labels.to, v.value]),
    [['closed', 'open', 1], ['open', 'half-open', 1], ['half-open', 'closed', 1]],
    'each transition counted: an open shorter than a scrape still shows',
  )
})

t.test('half-open: one probe at a time; the others are refused while it is out', async (t) => {
  let answer!: (r: ReturnType<typeof response>) => void
  const d = deps()
  const clock = fakeClock()
  const breaker = new Breaker('app', OPTS, { ...d, clock })
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 4; i++) await through(breaker, async () => response(502))
  clock.advance(150)
  const probe = through(breaker, () => new Promise((resolve) => (answer = resolve)))
  await t.rejects(through(breaker, async () => response(200)), { code: 'circuit_open' }, 'a second attempt while the probe is out')
  answer(response(200))
  t.equal((await probe).status, 200)
  t.equal(breaker.state, 'closed')
})

t.test('a backend passing its health checks again closes its open breaker at once', async (t) => {
  const { breaker, next, call, d } = setup([response(502), response(502), response(502), response(502), response(200)], { ...OPTS, resetTimeoutMs: 60_000 })
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 4; i++) await call()
  t.equal(breaker.state, 'open')
  breaker.recovered()
  t.equal(breaker.state, 'closed', 'closed without waiting out resetTimeoutMs (60 s)')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 0)
  t.equal((await call()).status, 200, 'and the backend is called again')
  t.equal(next.calls.length, 5)
  t.match(d.lines.at(-1), { msg: 'circuit breaker closed', backend: 'app' })
})

t.test('a failed probe reopens it, for another resetTimeoutMs', async (t) => {
  const { breaker, call, clock } = setup(Array.from({ length: 6 }, () => response(502)))
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 4; i++) await call()
  clock.advance(150)
  t.equal(breaker.state, 'half-open')
  t.equal((await call()).status, 502)
  t.equal(breaker.state, 'open')
  clock.advance(149)
  t.equal(breaker.state, 'open')
  clock.advance(1)
  t.equal(breaker.state, 'half-open')
})

t.test('4xx, client aborts and request-side errors are not failures: volumeThreshold of any one kind leaves the breaker closed', async (t) => {
  const n = OPTS.volumeThreshold // were each counted: n of n failed, at volume and over the threshold
  const kinds: Array<[string, () => Step]> = [
    ['400', () => response(400)],
    ['404', () => response(404)],
    ['409', () => response(409)],
    ['429', () => response(429)],
    ['client_closed', () => new SidecarError('client_closed')],
    ['client_slow', () => new SidecarError('client_slow')],
    ['request_timeout', () => new SidecarError('request_timeout')],
    ['body_too_large', () => new SidecarError('body_too_large')],
  ]
  for (const [what, step] of kinds) {
    const { breaker, next, call } = setup(Array.from({ length: n }, step))
    for (let i = 0; i < n; i++) {
      const outcome = await call().then((r) => String(r.status), (err: SidecarError) => err.code)
      t.equal(outcome, what, `${what}: passed up unchanged`)
    }
    t.equal(next.calls.length, n, `${what}: all ${n} went through the breaker`)
    t.equal(breaker.state, 'closed', `${what}: ${n} of ${n} in the window (volumeThreshold ${n}), none counted as failed`)
    breaker.shutdown()
  }
  // the same count of the app's failures does open it: the window above was at volume
  const { breaker, call } = setup(Array.from({ length: n }, () => response(500)))
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < n; i++) await call()
  t.equal(breaker.state, 'open', `${n} 5xx: open`)
})

t.test('failures leave the rolling window as the clock moves on', async (t) => {
  const { breaker, call, clock } = setup([response(500), response(500), response(500), response(200), response(500), response(500)])
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 3; i++) await call()
  clock.advance(10_000) // the whole window turns over: those three failures are forgotten
  await call() // 200
  await call() // 500
  await call() // 500
  t.equal(breaker.state, 'closed', 'three attempts in the window: below volumeThreshold (4)')
})

t.test('a backend without a breaker (gone after a reload) passes straight through', async (t) => {
  const { breaker, call } = setup([response(500)])
  t.teardown(() => breaker.shutdown())
  t.equal((await call('gone')).status, 500)
})

t.test('it opens when more than errorThresholdPercentage of the window failed, not at it', async (t) => {
  const steps: Step[] = [...Array.from({ length: 6 }, () => response(200)), ...Array.from({ length: 7 }, () => response(500))]
  const { breaker, call, d } = setup(steps)
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 12; i++) await call()
  t.equal(breaker.state, 'closed', '6 of 12 failed: 50%, not more')
  await call()
  t.equal(breaker.state, 'open', '7 of 13: over 50%')
  t.match(d.lines.at(-1), { msg: 'circuit breaker open', failures: 7, fires: 13 }, 'the log says what the window held')
})

t.test('closing empties the window: the failures that opened it are not held against the backend again', async (t) => {
  const { breaker, call, clock } = setup([...Array.from({ length: 4 }, () => response(500)), response(200), response(500), response(500)])
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 4; i++) await call()
  clock.advance(150)
  await call() // the probe: 200
  t.equal(breaker.state, 'closed')
  await call()
  await call()
  t.equal(breaker.state, 'closed', 'two failures since: below volumeThreshold (4)')
})

t.test('after shutdown (a backend removed by a reload), attempts pass through uncounted', async (t) => {
  const { breaker, call } = setup(Array.from({ length: 6 }, () => response(500)))
  breaker.shutdown()
  for (let i = 0; i < 6; i++) t.equal((await call()).status, 500)
  t.equal(breaker.state, 'closed')
})
