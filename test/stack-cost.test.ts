// The request path's cost guard: what one plain request makes on its way through every layer of
// src/stack.ts, counted in-process (async_hooks sees every promise and timer created), so that a
// regression shows as a count, never as a timing on a noisy machine. The figures are of the
// stack alone (the terminal answers at once): the upstream client's and Node's own are apart.
// The layers answer through a Reply (pipeline/types.ts), so a request that has nothing to wait
// for makes no promise at all: a layer made `async`, or one that goes on with `.then`, costs 1 to
// 3 promises per request, a timer per layer one Timeout: either fails this. Raise a bound only with the reason in the
// commit; the benchmark (npm run bench) holds the resulting CPU per request.
import { createHook } from 'node:async_hooks'
import { Writable } from 'node:stream'
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import { systemClock } from '../src/clock.js'
import { validateConfig } from '../src/config/load.js'
import { createLogger } from '../src/log.js'
import { createMetrics } from '../src/metrics.js'
import { BufferBudget } from '../src/pipeline/buffers.js'
import type { Handler, ProxyRequest, ProxyResponse, Reply, RequestContext } from '../src/pipeline/types.js'
import { buildStack } from '../src/stack.js'
import { Ids, type SpanRecord } from '../src/tracing/context.js'
import { Backends } from '../src/upstream/backends.js'
import { context, promised, proxyRequest } from './fixtures/pipeline.js'

/** The stack built from `raw` config, in front of a terminal that answers 200 at once (or, given
 *  `held`, keeps each attempt's reply there unanswered: requests in flight). */
function stack(raw: unknown, spans?: SpanRecord[], held?: Reply[]): { handler: Handler; close: () => Promise<void>; lines: () => number } {
  const config = validateConfig(raw)
  let lines = 0
  const logger = createLogger({ level: 'info' }, new Writable({ write: (_c, _e, done) => (lines++, done()) }))
  const metrics = createMetrics()
  const backends = new Backends(config, { clock: systemClock, logger, metrics })
  const answer: ProxyResponse = { status: 200, headers: { 'content-type': 'application/json' }, body: Buffer.from('{}') }
  backends.handler = () => (_req, _ctx, reply) => (held ? void held.push(reply) : reply.ok({ ...answer }))
  // tracing's deps as app.ts passes them when the config has a tracing section: spans kept here
  const tracing = spans && { sink: { record: (span: SpanRecord) => void spans.push(span) }, ids: new Ids() }
  const handler = buildStack(config, { logger, metrics, clock: systemClock, backends, buffers: new BufferBudget(1 << 20), tracing })
  return { handler, close: () => backends.close(), lines: () => lines }
}

/** Promises and timers created per request, over `n` requests, each ended as the listener
 *  would, less the harness's own (counted around a handler that answers at once). */
async function perRequest(handler: Handler, n = 50): Promise<{ promises: number; timers: number; status: number }> {
  const harness = await counted((_req, _ctx, reply) => reply.ok({ status: 200, headers: {}, body: null }), n)
  const cost = await counted(handler, n)
  return { promises: cost.promises - harness.promises, timers: cost.timers - harness.timers, status: cost.status }
}

async function counted(handler: Handler, n: number): Promise<{ promises: number; timers: number; status: number }> {
  const counts = { PROMISE: 0, Timeout: 0 }
  const hook = createHook({
    init(_id, type) {
      if (type === 'PROMISE' || type === 'Timeout') counts[type]++
    },
  })
  let status = 0
  const one = async () => {
    const ctx = context()
    const req = proxyRequest({ headers: { host: 'app' } })
    const res = await promised(handler)(req, ctx)
    status = res.status
    for (const fn of ctx.onEnd) fn({ status: res.status, bytesIn: 40, bytesOut: 100, complete: true, durationSeconds: 0.001 }, req, ctx)
  }
  await one() // first use: lazy set-up is no per-request cost
  hook.enable()
  for (let i = 0; i < n; i++) await one()
  hook.disable()
  return { promises: counts.PROMISE / n, timers: counts.Timeout / n, status }
}

t.test('one plain request through the default stack: no promise and one timer', async (t) => {
  const s = stack({ backends: [{ name: 'app', url: 'http://127.0.0.1:1' }] })
  t.teardown(s.close)
  const cost = await perRequest(s.handler)
  t.equal(cost.status, 200, 'the requests went through')
  t.ok(s.lines() >= 50, 'and each wrote its access line')
  t.equal(cost.promises, 0, `${cost.promises} promises per request`)
  t.ok(cost.timers <= 1, `${cost.timers} timers per request (the attempt's deadline)`)
})

t.test('with retries, the breaker and a canary split configured, the same', async (t) => {
  const s = stack({
    backends: [
      { name: 'app', url: 'http://127.0.0.1:1', weight: 90 },
      { name: 'canary', url: 'http://127.0.0.1:2', weight: 10 },
    ],
    retry: { attempts: 3, perTryTimeoutMs: 1000 },
    circuitBreaker: { volumeThreshold: 20 },
  })
  t.teardown(s.close)
  const cost = await perRequest(s.handler)
  t.equal(cost.status, 200)
  t.equal(cost.promises, 0, `${cost.promises} promises per request`)
  t.ok(cost.timers <= 1, `${cost.timers} timers per request`)
})

t.test('tracing on, not sampled: the same promises and timers as off (the app is told, nothing is recorded)', async (t) => {
  const spans: SpanRecord[] = []
  const s = stack({ backends: [{ name: 'app', url: 'http://127.0.0.1:1' }], tracing: { sampleRatio: 0 } }, spans)
  t.teardown(s.close)
  const cost = await perRequest(s.handler)
  t.equal(cost.status, 200)
  t.equal(spans.length, 0, 'nothing sampled')
  t.equal(cost.promises, 0, `${cost.promises} promises per request`)
  t.ok(cost.timers <= 1, `${cost.timers} timers per request`)
})

t.test('tracing on, every request sampled: still no promise (the attempt\'s CLIENT span ends on its outcome), no timer', async (t) => {
  const spans: SpanRecord[] = []
  const s = stack({ backends: [{ name: 'app', url: 'http://127.0.0.1:1' }], tracing: { sampleRatio: 1 } }, spans)
  t.teardown(s.close)
  const cost = await perRequest(s.handler)
  t.equal(cost.status, 200)
  t.equal(spans.length, 2 * 51, 'a SERVER and a CLIENT span per request')
  t.equal(cost.promises, 0, `${cost.promises} promises per request`)
  t.ok(cost.timers <= 1, `${cost.timers} timers per request`)
})

// What a request holds while it waits for the app: the bytes the stack keeps per request in
// flight, which under a burst of many connections are what the young generation promotes
// (docs/performance.md, Memory). Measured in-process after full collections, less what the
// harness itself holds (the request, its context and the reply it waits on), over 2,000 held
// requests. About 1.1 KB today: the attempt's `Try`, its deadline timer (a Timeout and two
// closures, some 260 bytes), retry's record of the tries, the end hooks' array, and one small
// object per layer that acts on the answer. A promise, a `.then` or a closure per such layer
// brings it back up by some 250 bytes a layer (the contract before the sixth round held about
// 1.4 KB more).
v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

async function heldPerRequest(raw: Record<string, unknown>, n = 2000): Promise<{ bytes: number; held: number }> {
  const held: Reply[] = []
  // every request in flight at once, none waiting for a slot
  const s = stack({ ...raw, limits: { maxConcurrentRequests: 2 * n } }, undefined, held)
  const harness: Array<{ req: ProxyRequest; ctx: RequestContext; reply: Reply }> = []
  const send = (handler: Handler) => {
    const one = { req: proxyRequest({ headers: { host: 'app' } }), ctx: context(), reply: { ok: noop, fail: noop } }
    harness.push(one)
    handler(one.req, one.ctx, one.reply)
  }
  const heapAfter = (fn: () => void) => {
    gc()
    const before = process.memoryUsage().heapUsed
    fn()
    gc()
    return process.memoryUsage().heapUsed - before
  }
  // first uses: lazy set-up, and the code V8 compiles for a hot path, are not per request
  for (let i = 0; i < 500; i++) send(s.handler)
  for (const reply of held) reply.ok({ status: 200, headers: {}, body: null })
  harness.length = held.length = 0
  // three times, the least kept: a one-time allocation (a table grown, code compiled) lands in
  // one measurement, never in all three
  let bytes = Infinity
  let count = 0
  for (let round = 0; round < 3; round++) {
    const own = heapAfter(() => {
      for (let i = 0; i < n; i++) send((_req, _ctx, reply) => void held.push(reply))
    })
    harness.length = held.length = 0
    const all = heapAfter(() => {
      for (let i = 0; i < n; i++) send(s.handler)
    })
    count = held.length
    for (const reply of held) reply.ok({ status: 200, headers: {}, body: null })
    harness.length = held.length = 0
    bytes = Math.min(bytes, (all - own) / n)
  }
  await s.close()
  return { bytes, held: count }
}

function noop(): void {}

t.test('a plain request in flight: the stack holds at most 1.5 KB for it', async (t) => {
  const cost = await heldPerRequest({ backends: [{ name: 'app', url: 'http://127.0.0.1:1' }] })
  t.equal(cost.held, 2000, 'every request reached the app and waits there')
  t.ok(cost.bytes <= 1536, `${Math.round(cost.bytes)} bytes per request in flight`)
})

t.test('with retries, the breaker and a canary split: the same bound', async (t) => {
  const cost = await heldPerRequest({
    backends: [
      { name: 'app', url: 'http://127.0.0.1:1', weight: 90 },
      { name: 'canary', url: 'http://127.0.0.1:2', weight: 10 },
    ],
    retry: { attempts: 3, perTryTimeoutMs: 1000 },
    circuitBreaker: { volumeThreshold: 20 },
  })
  t.equal(cost.held, 2000)
  t.ok(cost.bytes <= 1536, `${Math.round(cost.bytes)} bytes per request in flight`)
})
