import { Readable } from 'node:stream'
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createOverloadLayer } from '../../src/layers/overload.js'
import { Gate } from '../../src/upstream/gate.js'
import type { ProxyResponse } from '../../src/pipeline/types.js'
import { context, deps, drive, metricValue, proxyRequest, type AsyncHandler } from '../fixtures/pipeline.js'
import { Cancel } from '../../src/pipeline/cancel.js'
import { fakeClock } from '../fixtures/clock.js'

/** A next whose calls wait until the test answers them. */
function held() {
  const pending: Array<(res: ProxyResponse) => void> = []
  const failing: Array<(err: Error) => void> = []
  const next: AsyncHandler = () =>
    new Promise((resolve, reject) => {
      pending.push(resolve)
      failing.push(reject)
    })
  return { next, pending, failing }
}

const tick = () => new Promise((resolve) => setImmediate(resolve))

/** A gate per backend name, made on first use (as Backends holds them). */
function gates() {
  const byName = new Map<string, Gate>()
  const gateOf = (backend: string) => {
    let gate = byName.get(backend)
    if (!gate) byName.set(backend, (gate = new Gate()))
    return gate
  }
  return { gateOf, inFlight: (backend: string) => ({ active: gateOf(backend).active, waiting: gateOf(backend).waiting }) }
}

t.test('past in-flight and waiting limits: 503 overloaded at once; the rest are served in turn', async (t) => {
  const d = deps()
  const g = gates()
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 2, maxPendingRequests: 1 }, { ...d, clock: fakeClock(), gateOf: g.gateOf }))(next)
  const results = Array.from({ length: 5 }, () => handler(proxyRequest(), context({ backend: 'app' })).then((r) => r.status, (e: { code: string }) => e.code))
  await tick()
  t.equal(pending.length, 2, 'two in flight')
  t.same(g.inFlight('app'), { active: 2, waiting: 1 }, 'what /status reports')
  t.equal(await results[3], 'overloaded', 'the fourth is refused at once')
  t.equal(await results[4], 'overloaded')
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'overloaded' }), 2)
  pending[0]!({ status: 200, headers: {}, body: null })
  await tick()
  t.equal(pending.length, 3, 'the waiting one got the freed slot')
  pending[1]!({ status: 200, headers: {}, body: null })
  pending[2]!({ status: 200, headers: {}, body: null })
  t.same(await Promise.all(results.slice(0, 3)), [200, 200, 200])
})

t.test('a streamed response holds its slot until the body is done', async (t) => {
  const d = deps()
  const g = gates()
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 1, maxPendingRequests: 0 }, { ...d, clock: fakeClock(), gateOf: g.gateOf }))(next)
  const first = handler(proxyRequest(), context({ backend: 'app' }))
  await tick()
  const body = new Readable({ read() {} })
  pending[0]!({ status: 200, headers: {}, body })
  await first
  await t.rejects(handler(proxyRequest(), context({ backend: 'app' })), { code: 'overloaded' }, 'still busy while the body streams')
  const canary = handler(proxyRequest(), context({ backend: 'canary' }))
  await tick()
  t.equal(pending.length, 2, 'limits are per backend: canary has its own slot')
  pending[1]!({ status: 200, headers: {}, body: null })
  await canary
  body.push(null)
  body.resume()
  await new Promise((resolve) => body.once('close', resolve))
  const again = handler(proxyRequest(), context({ backend: 'app' }))
  await tick()
  t.equal(pending.length, 3, 'the slot is free again')
  pending[2]!({ status: 204, headers: {}, body: null })
  t.equal((await again).status, 204)
})

t.test('a failed attempt frees its slot', async (t) => {
  const { next, failing, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 1, maxPendingRequests: 0 }, { ...deps(), clock: fakeClock(), gateOf: gates().gateOf }))(next)
  const first = handler(proxyRequest(), context({ backend: 'app' }))
  await tick()
  failing[0]!(new Error('boom'))
  await t.rejects(first)
  const second = handler(proxyRequest(), context({ backend: 'app' }))
  await tick()
  t.equal(pending.length, 2)
  pending[1]!({ status: 200, headers: {}, body: null })
  t.equal((await second).status, 200)
})

t.test('a layer below that answers and then throws (a bug) frees its slot once', async (t) => {
  const g = gates()
  const layer = createOverloadLayer({ maxConcurrentRequests: 2, maxPendingRequests: 0 }, { ...deps(), clock: fakeClock(), gateOf: g.gateOf })
  const outcomes: string[] = []
  const reply = { ok: (res: ProxyResponse) => outcomes.push(String(res.status)), fail: (err: unknown) => outcomes.push((err as Error).message) }
  layer(() => {
    throw new Error('before answering')
  })(proxyRequest(), context({ backend: 'app' }), reply)
  layer((_req, _ctx, r) => {
    r.ok({ status: 200, headers: {}, body: null })
    throw new Error('after answering')
  })(proxyRequest(), context({ backend: 'app' }), reply)
  t.same(outcomes, ['before answering', '200', 'after answering'], 'each outcome passed up as it came')
  t.same(g.inFlight('app'), { active: 0, waiting: 0 }, 'both slots free, none freed twice')
})

t.test('a waiting attempt leaves the queue when its client leaves or its deadline passes', async (t) => {
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 1, maxPendingRequests: 5 }, { ...deps(), clock: fakeClock(), gateOf: gates().gateOf }))(next)
  const busy = handler(proxyRequest(), context({ backend: 'app' }))
  const ac = new Cancel()
  const leaving = handler(proxyRequest(), context({ backend: 'app', signal: ac }))
  const deadline = new Cancel()
  const timingOut = handler(proxyRequest(), context({ backend: 'app', attemptSignal: deadline }))
  ac.abort(new SidecarError('client_closed'))
  deadline.abort(new SidecarError('upstream_timeout'))
  await t.rejects(leaving, { code: 'client_closed' })
  await t.rejects(timingOut, { code: 'upstream_timeout' })
  const gone = new Cancel()
  gone.abort(new SidecarError('client_closed'))
  await t.rejects(handler(proxyRequest(), context({ backend: 'app', signal: gone })), { code: 'client_closed' }, 'already gone: not queued at all')
  const later = handler(proxyRequest(), context({ backend: 'app' }))
  pending[0]!({ status: 200, headers: {}, body: null })
  await busy
  await tick()
  t.equal(pending.length, 2, 'the slot went to the one still waiting, not to those that left')
  pending[1]!({ status: 200, headers: {}, body: null })
  t.equal((await later).status, 200)
})

t.test('waiting requests are served by client connection in turn; a full queue turns away the newest of the connection waiting most', async (t) => {
  const d = deps()
  const g = gates()
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 1, maxPendingRequests: 3 }, { ...d, clock: fakeClock(), gateOf: g.gateOf }))(next)
  const [a, b] = [{ name: 'a' }, { name: 'b' }]
  const order: string[] = []
  const send = (connection: { name: string }, id: string) =>
    handler(proxyRequest({ path: `/${id}` }), context({ backend: 'app', connection })).then(
      (r) => (order.push(id), r.status),
      (e: { code: string }) => e.code,
    )
  const first = send(a, 'a0')
  await tick()
  const aWaiting = ['a1', 'a2', 'a3'].map((id) => send(a, id)) // the queue full, all of connection a
  await tick()
  const bOne = send(b, 'b1') // connection b: one
  await tick()
  t.equal(await aWaiting[2], 'overloaded', "a's newest turned away for b's first")
  t.same(g.inFlight('app'), { active: 1, waiting: 3 })
  for (let i = 0; i < 4; i++) {
    pending[i]!({ status: 200, headers: {}, body: null })
    await tick()
  }
  t.same(await Promise.all([first, aWaiting[0], aWaiting[1], bOne]), [200, 200, 200, 200])
  t.same(order, ['a0', 'a1', 'b1', 'a2'], 'b waited behind one of a, not behind all of them')
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'overloaded' }), 1)
})

/** A gate with a fixed concurrency limit of `limit` (backends[].concurrency.fixed). */
function limited(limit: number, maxWaitMs = 1000) {
  const gate = new Gate()
  gate.configure({ fixed: limit, maxWaitMs }, { clock: fakeClock(), logger: deps().logger, random: () => 0.5 }, 'app')
  return gate
}

t.test('a concurrency limit below maxConcurrentRequests: past it requests wait their turn, then 503 concurrency_limited after maxWaitMs', async (t) => {
  const d = deps()
  const clock = fakeClock()
  const gate = limited(2, 500)
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 100, maxPendingRequests: 10 }, { ...d, clock, gateOf: () => gate }))(next)
  const results = Array.from({ length: 4 }, () => handler(proxyRequest(), context({ backend: 'app' })).then((r) => r.status, (e: SidecarError) => e))
  await tick()
  t.equal(pending.length, 2, 'two at once: the limit')
  t.equal(gate.waiting, 2)
  pending[0]!({ status: 200, headers: {}, body: null })
  await tick()
  t.equal(pending.length, 3, 'a freed slot goes to the first in line')
  clock.advance(500)
  const refused = (await results[3]) as SidecarError
  t.match(refused, { code: 'concurrency_limited', status: 503, retryAfterSeconds: 1 }, 'the last waited maxWaitMs')
  t.match(refused.detail, /2 in flight \(its concurrency limit is 2\)/)
  t.equal(gate.waiting, 0, 'and left the line')
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'concurrency_limited' }), 1)
})

t.test('a full line under a concurrency limit is refused as concurrency_limited, not overloaded', async (t) => {
  const d = deps()
  const gate = limited(1)
  const { next } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 100, maxPendingRequests: 1 }, { ...d, clock: fakeClock(), gateOf: () => gate }))(next)
  const results = Array.from({ length: 3 }, () => handler(proxyRequest(), context({ backend: 'app' })).then((r) => r.status, (e: SidecarError) => e.code))
  await tick()
  t.equal(await results[2], 'concurrency_limited')
})

t.test('the limit raised: waiters come in at once; lowered: a freed slot is not passed on while over it', async (t) => {
  const d = deps()
  const gate = limited(1)
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 100, maxPendingRequests: 10 }, { ...d, clock: fakeClock(), gateOf: () => gate }))(next)
  const results = Array.from({ length: 4 }, () => handler(proxyRequest(), context({ backend: 'app' })).then((r) => r.status))
  await tick()
  t.equal(pending.length, 1)
  gate.configure({ fixed: 3, maxWaitMs: 1000 }, { clock: fakeClock(), logger: d.logger, random: () => 0.5 }, 'app')
  await tick()
  t.equal(pending.length, 3, 'raised to 3: two waiters in')
  t.same({ active: gate.active, waiting: gate.waiting }, { active: 3, waiting: 1 })
  gate.configure({ fixed: 1, maxWaitMs: 1000 }, { clock: fakeClock(), logger: d.logger, random: () => 0.5 }, 'app')
  pending[0]!({ status: 200, headers: {}, body: null })
  pending[1]!({ status: 200, headers: {}, body: null })
  await tick()
  t.equal(pending.length, 3, 'lowered to 1: the freed slots are not passed on')
  t.same({ active: gate.active, waiting: gate.waiting }, { active: 1, waiting: 1 })
  pending[2]!({ status: 200, headers: {}, body: null })
  await tick()
  t.equal(pending.length, 4, 'back under the limit: the next in line comes in')
  pending[3]!({ status: 200, headers: {}, body: null })
  t.same(await Promise.all(results), [200, 200, 200, 200])
})

t.test('an adaptive limit is fed each answer\'s latency and the requests in flight then', async (t) => {
  const d = deps()
  const clock = fakeClock()
  const gate = new Gate()
  gate.configure(
    { adaptive: { min: 2, max: 100, sampleWindowMs: 100, percentile: 0.5, tolerance: 0.25, minRttIntervalMs: 60_000, minRttRequests: 2, jitter: 0 }, maxWaitMs: 1000 },
    { clock, logger: d.logger, random: () => 0.5 },
    'app',
  )
  t.equal(gate.limit, 2, 'starts at min, measuring')
  const { next, pending } = held()
  const handler = drive(createOverloadLayer({ maxConcurrentRequests: 100, maxPendingRequests: 10 }, { ...d, clock, gateOf: () => gate }))(next)
  const results = Array.from({ length: 2 }, () => handler(proxyRequest(), context({ backend: 'app' })).then((r) => r.status))
  await tick()
  await new Promise((resolve) => setTimeout(resolve, 20))
  for (const answer of pending) answer({ status: 200, headers: {}, body: null })
  t.same(await Promise.all(results), [200, 200])
  const state = gate.limiter!.state()
  t.equal(state.phase, 'adapting', 'two samples: the minimum measured')
  t.ok(state.minRttMs! >= 15 && state.minRttMs! < 1000, `from the slots' real latency (${state.minRttMs} ms)`)
  gate.configure(undefined, { clock, logger: d.logger, random: () => 0.5 }, 'app')
  t.equal(gate.limit, Infinity, 'the limit lifted by a reload that removes it')
  t.equal(gate.limiter, undefined)
})
