import t from 'tap'
import { RecentRequests } from '../src/admin/recent.js'
import { createMetrics } from '../src/metrics.js'

t.test('recent requests: per backend over the last minute, a 5-minute series of 10 s buckets', async (t) => {
  let now = 1_000_000_000
  const recent = new RecentRequests(() => now)
  recent.record('app', 200)
  recent.record('app', 503)
  recent.record('canary', 200)
  now += 30_000
  recent.record('app', 200)
  t.same(recent.totals(), { app: { requests: 3, errors: 1 }, canary: { requests: 1, errors: 0 } })
  now += 40_000 // the first bucket is now 70 s old
  t.same(recent.totals(), { app: { requests: 1, errors: 0 } })
  const series = recent.series()
  t.equal(series.length, 30)
  t.same(series.at(-1), { start: 1_000_070_000, requests: 0, errors: 0 }, 'the current bucket, empty')
  t.same(series.at(-8), { start: 1_000_000_000, requests: 3, errors: 1 })
  t.same(series.at(-5), { start: 1_000_030_000, requests: 1, errors: 0 })
  now += 10 * 60_000
  recent.record('app', 200)
  t.same(recent.totals(), { app: { requests: 1, errors: 0 } }, 'old buckets never count again')
  t.equal(recent.series().reduce((n, b) => n + b.requests, 0), 1)
})

t.test('recent retries and refusals: per backend and reason over the window, in the same buckets', async (t) => {
  let now = 1_000_000_000
  const recent = new RecentRequests(() => now)
  recent.recordRetry('canary', 'gateway-error')
  recent.recordRetry('canary', 'gateway-error')
  recent.recordRetry('app', 'reset')
  recent.recordRejection('overloaded')
  recent.recordBudgetExhausted()
  now += 30_000
  recent.recordRetry('canary', 'refused')
  recent.recordRejection('overloaded')
  recent.recordRejection('body_too_large')
  t.same(recent.retries(), { byBackend: { canary: { 'gateway-error': 2, refused: 1 }, app: { reset: 1 } }, budgetExhausted: 1 })
  t.same(recent.rejections(), { overloaded: 2, body_too_large: 1 })
  now += 40_000 // the first bucket is now 70 s old
  t.same(recent.retries(), { byBackend: { canary: { refused: 1 } }, budgetExhausted: 0 })
  t.same(recent.rejections(), { overloaded: 1, body_too_large: 1 })
  t.same(recent.totals(), {}, 'requests are counted apart')
})

t.test('retries and refusals reach both Prometheus and the recent window', async (t) => {
  const recent = new RecentRequests(Date.now)
  const metrics = createMetrics({ observer: recent })
  metrics.countRetry('app', 'reset')
  metrics.countRetry('app', 'reset')
  metrics.countRejection('overloaded')
  metrics.countBudgetExhausted()
  const text = await metrics.registry.metrics()
  t.match(text, /^sidecar_retries_total\{backend="app",reason="reset"\} 2$/m)
  t.match(text, /^sidecar_rejected_requests_total\{reason="overloaded"\} 1$/m)
  t.match(text, /^sidecar_retry_budget_exhausted_total 1$/m)
  t.match(await metrics.registry.metrics(), /^sidecar_retries_total\{backend="app",reason="reset"\} 2$/m, 'a second scrape counts nothing twice')
  t.same(recent.retries(), { byBackend: { app: { reset: 2 } }, budgetExhausted: 1 })
  t.same(recent.rejections(), { overloaded: 1 })
})

t.test('fault and mirror totals for /status: nested by route or backend, whatever the name', async (t) => {
  const m = createMetrics()
  m.countFault('constructor', 'abort')
  m.countFault('constructor', 'abort')
  m.countFault('pay', 'delay')
  m.countMirror('shadow', 'sent')
  m.countMirror('shadow', 'dropped')
  const totals = m.faultAndMirrorTotals()
  t.same(totals, { faults: { constructor: { abort: 2 }, pay: { delay: 1 } }, mirror: { shadow: { sent: 1, dropped: 1 } } })
  totals.faults.pay!.delay = 99
  t.equal(m.faultAndMirrorTotals().faults.pay!.delay, 1, 'a copy: /status cannot change the counts')
})
