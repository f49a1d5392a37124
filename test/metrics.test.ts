import t from 'tap'
import { RecentRequests } from '../src/metrics.js'

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
