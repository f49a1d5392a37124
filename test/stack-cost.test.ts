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
import t from 'tap'
import { systemClock } from '../src/clock.js'
import { validateConfig } from '../src/config/load.js'
import { createLogger } from '../src/log.js'
import { createMetrics } from '../src/metrics.js'
import { BufferBudget } from '../src/pipeline/buffers.js'
import type { Handler, ProxyResponse } from '../src/pipeline/types.js'
import { buildStack } from '../src/stack.js'
import { Ids, type SpanRecord } from '../src/tracing/context.js'
import { Backends } from '../src/upstream/backends.js'
import { context, promised, proxyRequest } from './fixtures/pipeline.js'

/** The stack built from `raw` config, in front of a terminal that answers 200 at once. */
function stack(raw: unknown, spans?: SpanRecord[]): { handler: Handler; close: () => Promise<void>; lines: () => number } {
  const config = validateConfig(raw)
  let lines = 0
  const logger = createLogger({ level: 'info' }, new Writable({ write: (_c, _e, done) => (lines++, done()) }))
  const metrics = createMetrics()
  const backends = new Backends(config, { clock: systemClock, logger, metrics })
  const answer: ProxyResponse = { status: 200, headers: { 'content-type': 'application/json' }, body: Buffer.from('{}') }
  backends.handler = () => (_req, _ctx, reply) => reply.ok({ ...answer })
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
