// The fault layer alone: which requests it delays or aborts, on the fake clock and a scripted
// random, and what a client leaving during a delay does.
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createFaultLayer, type FaultOptions } from '../../src/layers/fault.js'
import { Cancel } from '../../src/pipeline/cancel.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

function layer(opts: FaultOptions, random: () => number, clock = fakeClock(), maxAskedDelayMs = 60_000) {
  const d = deps()
  const app = scripted(response(200), response(200), response(200), response(200))
  const handler = drive(createFaultLayer(opts, { metrics: d.metrics, clock, random, route: 'r', maxAskedDelayMs }))(app)
  return { d, app, handler, clock }
}

t.test('percent draws: random below the share faults, at or above it passes', async (t) => {
  const draws = [0.299, 0.3]
  const { d, app, handler } = layer({ abort: { status: 503, percent: 30 }, headerControl: false }, () => draws.shift()!)
  const err = await handler(proxyRequest(), context()).catch((e: SidecarError) => e)
  t.equal((err as SidecarError).code, 'fault_injected')
  t.equal((err as SidecarError).status, 503)
  t.equal((await handler(proxyRequest(), context())).status, 200)
  t.equal(app.calls.length, 1, 'the aborted request went no further')
  t.equal(await metricValue(d, 'sidecar_faults_injected_total', { route: 'r', kind: 'abort' }), 1)
})

t.test('percent 0 never draws, fractions work', async (t) => {
  let draws = 0
  const { handler } = layer({ abort: { status: 500, percent: 0 }, headerControl: false }, () => (draws++, 0))
  t.equal((await handler(proxyRequest(), context())).status, 200)
  t.equal(draws, 0)
  const half = layer({ abort: { status: 500, percent: 0.5 }, headerControl: false }, () => 0.004)
  await t.rejects(half.handler(proxyRequest(), context()), { code: 'fault_injected', status: 500 })
  const notHalf = layer({ abort: { status: 500, percent: 0.5 }, headerControl: false }, () => 0.006)
  t.equal((await notHalf.handler(proxyRequest(), context())).status, 200)
})

t.test('a delay sleeps on the clock before forwarding, then the abort (Envoy order)', async (t) => {
  const { d, app, handler, clock } = layer({ delay: { ms: 250, percent: 100 }, abort: { status: 502, grpcStatus: 4, percent: 100 }, headerControl: false }, () => 0)
  const err = (await handler(proxyRequest(), context()).catch((e: unknown) => e)) as SidecarError
  t.same(clock.sleeps, [250])
  t.equal(err.code, 'fault_injected')
  t.equal(err.status, 502)
  t.equal(err.grpcStatus, 4)
  t.equal(app.calls.length, 0)
  t.equal(await metricValue(d, 'sidecar_faults_injected_total', { route: 'r', kind: 'delay' }), 1)
  t.equal(await metricValue(d, 'sidecar_faults_injected_total', { route: 'r', kind: 'abort' }), 1)
})

t.test('a client leaving during the delay ends it: the app sees nothing', async (t) => {
  const clock = fakeClock(0, { sleepsWait: true })
  const { app, handler } = layer({ delay: { ms: 5000, percent: 100 }, headerControl: false }, () => 0, clock)
  const signal = new Cancel()
  const pending = handler(proxyRequest(), context({ signal }))
  clock.advance(4999)
  t.equal(app.calls.length, 0, 'still waiting')
  signal.abort(new Error('client left'))
  await t.rejects(pending, { code: 'client_closed' })
  clock.advance(10_000)
  t.equal(app.calls.length, 0, 'never forwarded')
})

t.test('a delay that runs out forwards the request', async (t) => {
  const clock = fakeClock(0, { sleepsWait: true })
  const { app, handler } = layer({ delay: { ms: 5000, percent: 100 }, headerControl: false }, () => 0, clock)
  const pending = handler(proxyRequest(), context())
  clock.advance(4999)
  await new Promise((r) => setImmediate(r))
  t.equal(app.calls.length, 0)
  clock.advance(1)
  t.equal((await pending).status, 200)
  t.equal(app.calls.length, 1)
})

t.test('header control: honoured only when on; delays capped; nonsense ignored', async (t) => {
  const asked = (delayMs?: string, abort?: string) => proxyRequest({ faultAsked: { delayMs, abort } })
  const off = layer({ abort: { status: 500, percent: 0 }, headerControl: false }, () => 0.5)
  t.equal((await off.handler(asked('100', '418'), context())).status, 200)
  t.same(off.clock.sleeps, [])
  const on = layer({ headerControl: true }, () => 0.5, fakeClock(), 2000)
  await t.rejects(on.handler(asked(undefined, '418'), context()), { code: 'fault_injected', status: 418 })
  t.equal((await on.handler(asked('99999999'), context())).status, 200)
  t.same(on.clock.sleeps, [2000], 'cut to the cap')
  t.equal((await on.handler(asked('-5', '999'), context())).status, 200, 'not a number, not a status: nothing asked')
  t.equal((await on.handler(asked('1.5', 'abc'), context())).status, 200)
  t.same(on.clock.sleeps, [2000])
})
