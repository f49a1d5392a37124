import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { Breakers, createBreakerLayer } from '../../src/layers/breaker.js'
import { context, deps, metricValue, proxyRequest, response, scripted, type Step } from '../fixtures/pipeline.js'

const OPTS = { errorThresholdPercentage: 50, volumeThreshold: 4, rollingWindowMs: 10_000, resetTimeoutMs: 150 }

function setup(steps: Step[], opts = OPTS) {
  const d = deps()
  const breakers = new Breakers(['app', 'canary'], opts, d)
  const next = scripted(...steps)
  const handler = createBreakerLayer(breakers)(next)
  const call = () => handler(proxyRequest(), context({ backend: 'app' }))
  return { d, breakers, next, call }
}

t.test('5xx and upstream errors open the breaker once volume and threshold are reached', async (t) => {
  const { breakers, next, call, d } = setup([response(500), new SidecarError('upstream_reset'), response(503), new SidecarError('upstream_timeout'), response(200)])
  t.teardown(() => breakers.shutdown())
  t.equal((await call()).status, 500, 'a 5xx is still the response the retry layer sees')
  await t.rejects(call(), { code: 'upstream_reset' })
  t.equal(breakers.state('app'), 'closed', 'below volumeThreshold nothing opens')
  t.equal((await call()).status, 503)
  await t.rejects(call(), { code: 'upstream_timeout' })
  t.equal(breakers.state('app'), 'open')
  t.equal(breakers.isAvailable('app'), false)
  t.equal(breakers.isAvailable('canary'), true, 'breakers are per backend')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 2)

  const rejected = await call().catch((err: SidecarError) => err)
  t.match(rejected, { code: 'circuit_open', status: 503 })
  t.ok((rejected as SidecarError).retryAfterSeconds! >= 1, 'with a Retry-After')
  t.equal(next.calls.length, 4, 'the backend got nothing while open')
  t.match(d.lines, [{ level: 'warn', msg: 'circuit breaker open', backend: 'app', state: 'open' }])
})

t.test('half-open lets one probe through; success closes the breaker', async (t) => {
  const { breakers, next, call, d } = setup([response(500), response(500), response(500), response(500), response(200), response(200)])
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < 4; i++) await call()
  t.equal(breakers.state('app'), 'open')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(breakers.state('app'), 'half-open')
  t.equal(breakers.isAvailable('app'), true, 'a half-open backend may be picked for its probe')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 1)
  t.equal((await call()).status, 200)
  t.equal(breakers.state('app'), 'closed')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 0)
  t.equal(next.calls.length, 5)
})

t.test('a backend passing its health checks again closes its open breaker at once', async (t) => {
  const { breakers, next, call, d } = setup([response(502), response(502), response(502), response(502), response(200)], { ...OPTS, resetTimeoutMs: 60_000 })
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < 4; i++) await call()
  t.equal(breakers.state('app'), 'open')
  breakers.recovered('canary')
  t.equal(breakers.state('app'), 'open', 'another backend recovering changes nothing here')
  breakers.recovered('app')
  t.equal(breakers.state('app'), 'closed', 'closed without waiting out resetTimeoutMs (60 s)')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'app' }), 0)
  t.equal((await call()).status, 200, 'and the backend is called again')
  t.equal(next.calls.length, 5)
  t.match(d.lines.at(-1), { msg: 'circuit breaker closed', backend: 'app' })
})

t.test('a failed probe reopens it', async (t) => {
  const { breakers, call } = setup(Array.from({ length: 5 }, () => response(502)))
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < 4; i++) await call()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(breakers.state('app'), 'half-open')
  t.equal((await call()).status, 502)
  t.equal(breakers.state('app'), 'open')
})

t.test('4xx, client aborts and request-side errors are not failures', async (t) => {
  const steps: Step[] = [response(404), response(429), new SidecarError('client_closed'), new SidecarError('body_too_large'), response(400), response(409)]
  const { breakers, call } = setup(steps)
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < steps.length; i++) await call().catch(() => undefined)
  t.equal(breakers.state('app'), 'closed')
})

t.test('a backend without a breaker (not configured) passes straight through', async (t) => {
  const d = deps()
  const breakers = new Breakers([], OPTS, d)
  const res = await createBreakerLayer(breakers)(scripted(response(500)))(proxyRequest(), context({ backend: 'x' }))
  t.equal(res.status, 500)
  t.equal(breakers.state('x'), 'closed')
})

t.test('sync after a reload: unchanged breakers keep their state, removed ones stop, new options reset', async (t) => {
  const { breakers, call, d } = setup(Array.from({ length: 4 }, () => response(500)))
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < 4; i++) await call()
  t.equal(breakers.state('app'), 'open')
  breakers.sync(['app', 'new'], OPTS)
  t.equal(breakers.state('app'), 'open', 'same options: the open breaker stays open')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'new' }), 0, 'a new backend gets a closed breaker')
  t.equal(await metricValue(d, 'sidecar_circuit_state', { backend: 'canary' }), undefined, 'a removed one leaves the metric')
  breakers.sync(['app', 'new'], { ...OPTS, volumeThreshold: 10 })
  t.equal(breakers.state('app'), 'closed', 'new options: fresh breakers')
})

t.test('the rolling window keeps counts only: no per-attempt latency list to sort on every failure', async (t) => {
  const { breakers, call } = setup(Array.from({ length: 50 }, () => response(200)))
  t.teardown(() => breakers.shutdown())
  for (let i = 0; i < 50; i++) await call()
  // opossum's default keeps every latency in the window and sorts them all on each failure
  // (about 1 ms per failed attempt at 20,000 attempts in the window).
  const opossum = (breakers as unknown as { breakers: Map<string, { stats: { fires: number; latencyTimes: number[] } }> }).breakers.get('app')!
  t.equal(opossum.stats.fires, 50, 'every attempt is counted')
  t.equal(opossum.stats.latencyTimes.length, 0, 'latency samples kept: 0 of 50')
})
