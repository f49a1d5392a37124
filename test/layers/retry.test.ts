import { Readable } from 'node:stream'
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createRetryLayer, grpcTimeoutMs, retryAfterMs, type RetryOptions } from '../../src/layers/retry.js'
import type { ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted, type AsyncHandler, type Step } from '../fixtures/pipeline.js'
import { Cancel } from '../../src/pipeline/cancel.js'

const OPTS: RetryOptions = {
  attempts: 3,
  retryOn: ['connect-failure', 'refused', 'reset', 'gateway-error'],
  statusCodes: [],
  methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'],
  backoff: { baseMs: 25, maxMs: 250 },
  budget: { ratio: 0.2, minPerSecond: 100, windowMs: 10_000 },
  maxReplayBytes: 1024,
  requestTimeoutMs: 15_000,
}

function setup(steps: Step[], opts: Partial<RetryOptions> = {}, random = () => 0) {
  const d = deps()
  const clock = fakeClock()
  const next = scripted(...steps)
  const handler = drive(createRetryLayer({ ...OPTS, ...opts }, { metrics: d.metrics, clock, random }))(next)
  return { d, clock, next, handler }
}

async function bodyOf(req: ProxyRequest): Promise<string> {
  if (!req.body) return ''
  if (Buffer.isBuffer(req.body)) return req.body.toString()
  const chunks: Buffer[] = []
  for await (const c of req.body) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString()
}

/** A next that records each attempt's body and then answers with the scripted steps. */
function recordingBodies(steps: Step[]) {
  const bodies: string[] = []
  const inner = scripted(...steps)
  const next = Object.assign(
    async (req: ProxyRequest, ctx: Parameters<typeof inner>[1]) => {
      bodies.push(await bodyOf(req))
      return inner(req, ctx)
    },
    { calls: inner.calls },
  )
  return { next, bodies }
}

t.test('503, 503, 200: the third attempt answers; each attempt is numbered for the app', async (t) => {
  const first = response(503, Readable.from(['busy']))
  const { handler, next, d } = setup([first, response(503), response(200)])
  const ctx = context({ backend: 'app' })
  const res = await handler(proxyRequest(), ctx)
  t.equal(res.status, 200)
  t.equal(next.calls.length, 3)
  t.same(next.calls.map((c) => c.req.headers['x-sidecar-attempt']), ['1', '2', '3'])
  t.equal(ctx.attempt, 3)
  t.ok((first.body as Readable).destroyed, 'a discarded response body is released')
  t.equal(await metricValue(d, 'sidecar_retries_total', { backend: 'app', reason: 'gateway-error' }), 2)
})

t.test('attempts is the total: with 2, the second failure is what the client gets', async (t) => {
  const { handler, next } = setup([response(502), response(504)], { attempts: 2 })
  t.equal((await handler(proxyRequest(), context())).status, 504)
  t.equal(next.calls.length, 2)
  const single = setup([response(503)], { attempts: 1 })
  t.equal((await single.handler(proxyRequest(), context())).status, 503)
  t.equal(single.next.calls.length, 1)
})

t.test('which failures are retried', async (t) => {
  const cases: Array<[string, Step, boolean]> = [
    ['refused', new SidecarError('upstream_refused'), true],
    ['connect timeout', new SidecarError('upstream_connect_timeout'), true],
    ['unreachable', new SidecarError('upstream_unreachable'), true],
    ['reset', new SidecarError('upstream_reset'), true],
    ['per-try timeout', new SidecarError('upstream_timeout'), true],
    ['502', response(502), true],
    ['500', response(500), false],
    ['429', response(429), false],
    ['404', response(404), false],
    ['bad response', new SidecarError('upstream_bad_response'), false],
    ['circuit open', new SidecarError('circuit_open'), false],
    ['overloaded', new SidecarError('overloaded'), false],
    ['client gone', new SidecarError('client_closed'), false],
    ['a bug', new TypeError('x'), false],
  ]
  for (const [name, step, retried] of cases) {
    const { handler, next } = setup([step, response(200)])
    await handler(proxyRequest(), context()).catch(() => undefined)
    t.equal(next.calls.length, retried ? 2 : 1, `${name}: ${retried ? 'retried' : 'not retried'}`)
  }
})

t.test('retryOn narrows the conditions; retriable-status-codes adds statuses', async (t) => {
  const resetOnly = setup([response(503), response(200)], { retryOn: ['reset'] })
  t.equal((await resetOnly.handler(proxyRequest(), context())).status, 503)
  const refusedOnly = setup([new SidecarError('upstream_connect_timeout'), response(200)], { retryOn: ['refused'] })
  await t.rejects(refusedOnly.handler(proxyRequest(), context()), { code: 'upstream_connect_timeout' })
  const viaConnectFailure = setup([new SidecarError('upstream_refused'), response(200)], { retryOn: ['connect-failure'] })
  t.equal((await viaConnectFailure.handler(proxyRequest(), context())).status, 200, 'refused counts as a connect failure')
  const codes = setup([response(429), response(200)], { retryOn: ['retriable-status-codes'], statusCodes: [429] })
  t.equal((await codes.handler(proxyRequest(), context())).status, 200)
})

t.test('POST is retried only with an Idempotency-Key; the body is replayed byte for byte', async (t) => {
  const plain = recordingBodies([response(503), response(200)])
  const h1 = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(plain.next)
  const post = (headers = {}) => proxyRequest({ method: 'POST', headers, body: Readable.from([Buffer.from('order=1')]), contentLength: 7 })
  t.equal((await h1(post(), context())).status, 503)
  t.same(plain.bodies, ['order=1'], 'one attempt, body forwarded')

  const keyed = recordingBodies([response(503), response(200)])
  const h2 = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(keyed.next)
  t.equal((await h2(post({ 'idempotency-key': 'k1' }), context())).status, 200)
  t.same(keyed.bodies, ['order=1', 'order=1'], 'the same body twice')
})

t.test('a refused connection is retried for any method, if the body can be sent again', async (t) => {
  const noBody = setup([new SidecarError('upstream_refused'), response(201)])
  t.equal((await noBody.handler(proxyRequest({ method: 'POST' }), context())).status, 201)
  const withBody = setup([new SidecarError('upstream_refused'), response(201)])
  await t.rejects(withBody.handler(proxyRequest({ method: 'POST', body: Readable.from(['x']), contentLength: 1 }), context()), { code: 'upstream_refused' })
  t.equal(withBody.next.calls.length, 1, 'a POST body is not kept, so it is not sent again')
  const reset = setup([new SidecarError('upstream_reset'), response(201)])
  await t.rejects(reset.handler(proxyRequest({ method: 'POST' }), context()), { code: 'upstream_reset' }, 'a reset POST may have reached the app: not retried')
})

t.test('a body over maxReplayBytes streams through intact and is never retried', async (t) => {
  const big = 'x'.repeat(3000)
  const declared = recordingBodies([response(503), response(200)])
  const h = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock() }))(declared.next)
  t.equal((await h(proxyRequest({ method: 'PUT', body: Readable.from([Buffer.from(big)]), contentLength: 3000 }), context())).status, 503)
  t.same(declared.bodies, [big])

  const chunks = Array.from({ length: 30 }, (_, i) => Buffer.from(String(i % 10).repeat(100)))
  const undeclared = recordingBodies([response(503), response(200)])
  const h2 = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock() }))(undeclared.next)
  t.equal((await h2(proxyRequest({ method: 'PUT', body: Readable.from(chunks) }), context())).status, 503)
  t.same(undeclared.bodies, [Buffer.concat(chunks).toString()], 'what was read ahead and the rest, in order')

  const small = recordingBodies([response(503), response(200)])
  const h3 = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock() }))(small.next)
  t.equal((await h3(proxyRequest({ method: 'PUT', body: Readable.from([Buffer.from('a'), Buffer.from('b')]) }), context())).status, 200)
  t.same(small.bodies, ['ab', 'ab'], 'an undeclared body under the cap is replayed')
})

t.test('a client leaving while its body is read ends the request as client_closed', async (t) => {
  const { handler } = setup([response(200)])
  const body = new Readable({ read() {} })
  const pending = handler(proxyRequest({ method: 'PUT', body }), context())
  body.destroy(new Error('aborted'))
  await t.rejects(pending, { code: 'client_closed' })
})

t.test('backoff: exponential with full jitter, capped at maxMs', async (t) => {
  const fails = Array.from({ length: 5 }, () => response(503))
  const { handler, clock } = setup([...fails, response(200)], { attempts: 6, backoff: { baseMs: 100, maxMs: 500 } }, () => 0.5)
  t.equal((await handler(proxyRequest(), context())).status, 200)
  t.same(clock.sleeps, [50, 100, 200, 250, 250])
})

t.test('Retry-After up to backoff.maxMs is honoured; a longer one ends the retrying', async (t) => {
  const short = setup([{ status: 503, headers: { 'retry-after': '0' }, body: null }, response(200)], {}, () => 0.9)
  t.equal((await short.handler(proxyRequest(), context())).status, 200)
  t.same(short.clock.sleeps, [], 'Retry-After: 0 means now')
  const long = setup([{ status: 503, headers: { 'retry-after': '30' }, body: null }, response(200)])
  t.equal((await long.handler(proxyRequest(), context())).status, 503)
  t.equal(long.next.calls.length, 1)
  t.equal(retryAfterMs('2', 0), 2000)
  t.equal(retryAfterMs(new Date(10_000).toUTCString(), 4_000), 6000)
  t.equal(retryAfterMs('soon', 0), undefined)
  t.equal(retryAfterMs(['1', '2'], 0), 1000)
})

t.test('one deadline over all tries: each try gets the rest of it, or perTryTimeoutMs', async (t) => {
  const d = deps()
  const clock = fakeClock()
  // every try runs into its own deadline: the app never answers
  const next = async (_req: ProxyRequest, ctx: ReturnType<typeof context>) => {
    clock.advance(clock.timeouts.at(-1)!)
    t.ok(ctx.attemptSignal.aborted, 'the attempt was aborted at its deadline')
    throw ctx.attemptSignal.reason
  }
  const perTry = drive(createRetryLayer({ ...OPTS, perTryTimeoutMs: 400, requestTimeoutMs: 1000 }, { metrics: d.metrics, clock, random: () => 0 }))(next)
  await t.rejects(perTry(proxyRequest(), context()), { code: 'upstream_timeout', message: /within 200 ms/ })
  t.same(clock.timeouts, [400, 400, 200], 'the third try gets only what is left')

  clock.timeouts.length = 0
  const whole = drive(createRetryLayer({ ...OPTS, requestTimeoutMs: 1000 }, { metrics: d.metrics, clock, random: () => 0 }))(next)
  await t.rejects(whole(proxyRequest(), context()), { code: 'upstream_timeout' })
  t.same(clock.timeouts, [1000], 'without perTryTimeoutMs the first try may use the whole deadline')
})

t.test('each attempt has its own signal; the client leaving aborts the current one', async (t) => {
  const ac = new Cancel()
  const signals: Cancel[] = []
  const next = async (_req: ProxyRequest, ctx: ReturnType<typeof context>) => {
    signals.push(ctx.attemptSignal)
    if (signals.length === 1) return response(503)
    ac.abort(new SidecarError('client_closed'))
    throw ctx.attemptSignal.reason
  }
  const handler = drive(createRetryLayer(OPTS, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(next)
  await t.rejects(handler(proxyRequest(), context({ signal: ac })), { code: 'client_closed' })
  t.equal(signals.length, 2)
  t.not(signals[0], signals[1], 'a new controller per attempt')
  t.notOk(signals[0]!.aborted, 'a finished attempt is not aborted by what happens later')
})

t.test('no retry when the backoff would pass the deadline', async (t) => {
  const { handler, next } = setup([response(503), response(200)], { requestTimeoutMs: 100, backoff: { baseMs: 200, maxMs: 400 } }, () => 0.9)
  t.equal((await handler(proxyRequest(), context())).status, 503)
  t.equal(next.calls.length, 1)
})

t.test('the budget caps retries under a failing upstream and counts what it refused', async (t) => {
  const steps = Array.from({ length: 400 }, () => response(503))
  const { handler, next, d } = setup(steps, { attempts: 3, budget: { ratio: 0.2, minPerSecond: 0, windowMs: 10_000 } })
  for (let i = 0; i < 100; i++) await handler(proxyRequest(), context({ backend: 'app' }))
  t.ok(next.calls.length <= 120, `${next.calls.length} attempts for 100 requests: at most (1 + 0.2) x 100`)
  t.ok(next.calls.length >= 115, 'and the budget is used')
  t.ok((await metricValue(d, 'sidecar_retry_budget_exhausted_total', {}))! >= 80)
})

t.test('a client leaving during the backoff ends the request', async (t) => {
  const ac = new Cancel()
  ac.abort(new SidecarError('client_closed'))
  const { handler } = setup([response(503), response(200)], {}, () => 0.5)
  await t.rejects(handler(proxyRequest(), context({ signal: ac })), { code: 'client_closed' })
})

t.test('grpc-timeout: digits and a unit, in milliseconds; anything else is no deadline', async (t) => {
  for (const [value, ms] of [
    ['100m', 100],
    ['5S', 5000],
    ['2M', 120_000],
    ['1H', 3_600_000],
    ['1500u', 2],
    ['7n', 1],
    ['123456789m', undefined],
    ['10s', undefined],
    ['', undefined],
    [undefined, undefined],
  ] as const) {
    t.equal(grpcTimeoutMs(value), ms, String(value))
  }
})

t.test("a gRPC request's deadline is its grpc-timeout when shorter than limits.requestTimeoutMs", async (t) => {
  const clock = fakeClock()
  const next: AsyncHandler = (_req, ctx) => new Promise((_resolve, reject) => ctx.attemptSignal.onAbort(reject))
  const handler = drive(createRetryLayer({ ...OPTS, attempts: 1 }, { metrics: deps().metrics, clock }))(next)
  const pending = handler(proxyRequest({ method: 'POST', headers: { 'content-type': 'application/grpc', 'grpc-timeout': '250m' } }), context())
  clock.advance(249)
  clock.advance(1)
  await t.rejects(pending, { code: 'upstream_timeout', message: /within 250 ms/ })
})

t.test('gRPC: a status named in retryOn is retried whatever the method, only with the whole body kept', async (t) => {
  const grpcReq = (body: Readable) => proxyRequest({ method: 'POST', headers: { 'content-type': 'application/grpc' }, body })
  const unavailable = (): ProxyResponse => ({ status: 200, headers: { 'grpc-status': '14' }, body: null })
  const { next, bodies } = recordingBodies([unavailable(), response(200)])
  const handler = drive(createRetryLayer({ ...OPTS, retryOn: ['unavailable'] }, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(next)
  t.equal((await handler(grpcReq(Readable.from([Buffer.from('msg')])), context({ backend: 'app' }))).status, 200)
  t.same(bodies, ['msg', 'msg'], 'a POST, retried with its message')

  // a streaming call whose body has not ended when the status comes: nothing to send again
  const open = new Readable({ read() {} })
  open.push('part 1')
  const once = scripted(unavailable(), response(200))
  const streaming = drive(createRetryLayer({ ...OPTS, retryOn: ['unavailable'] }, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(once)
  t.equal((await streaming(grpcReq(open), context({ backend: 'app' }))).headers['grpc-status'], '14')
  t.equal(once.calls.length, 1, 'not retried')

  // another status than the ones named
  const other = scripted({ status: 200, headers: { 'grpc-status': '13' }, body: null }, response(200))
  const named = drive(createRetryLayer({ ...OPTS, retryOn: ['unavailable'] }, { metrics: deps().metrics, clock: fakeClock(), random: () => 0 }))(other)
  await named(grpcReq(Readable.from([Buffer.from('x')])), context({ backend: 'app' }))
  t.equal(other.calls.length, 1, 'INTERNAL is not named: not retried')
})

t.test('requestTimeoutMs 0 (a route with no timeout): no deadline and no timer at all', async (t) => {
  const { clock, next, handler } = setup([new SidecarError('upstream_refused'), response(200)], { requestTimeoutMs: 0 })
  const res = await handler(proxyRequest(), context())
  t.equal(res.status, 200, 'retried as usual')
  t.equal(next.calls.length, 2)
  t.same(clock.timeouts, [], 'no per-try timer (one of Infinity would fire at once)')
})

t.test('requestTimeoutMs 0 still keeps perTryTimeoutMs and a gRPC deadline', async (t) => {
  const { clock, handler } = setup([response(200)], { requestTimeoutMs: 0, perTryTimeoutMs: 500 })
  await handler(proxyRequest(), context())
  t.same(clock.timeouts, [500])
  const grpc = setup([response(200)], { requestTimeoutMs: 0 })
  await grpc.handler(proxyRequest({ headers: { 'content-type': 'application/grpc', 'grpc-timeout': '2S' } }), context())
  t.same(grpc.clock.timeouts, [2000])
})

t.test('layers given one budget draw from it together', async (t) => {
  const { RetryBudget } = await import('../../src/layers/retry-budget.js')
  const d = deps()
  const clock = fakeClock()
  const budget = new RetryBudget({ ratio: 0, minPerSecond: 0.1, windowMs: 10_000 }, clock) // one retry in the window
  const a = drive(createRetryLayer(OPTS, { metrics: d.metrics, clock, random: () => 0, budget }))(scripted(new SidecarError('upstream_refused'), response(200)))
  const b = drive(createRetryLayer(OPTS, { metrics: d.metrics, clock, random: () => 0, budget }))(scripted(new SidecarError('upstream_refused'), response(200)))
  t.equal((await a(proxyRequest(), context())).status, 200, 'the first layer retried')
  await t.rejects(b(proxyRequest(), context()), { code: 'upstream_refused' }, 'the second found the shared budget spent')
})
