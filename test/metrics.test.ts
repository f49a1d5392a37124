import { execFileSync } from 'node:child_process'
import { accessSync, constants, existsSync, mkdtempSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { Histogram, Registry } from 'prom-client'
import { RecentRequests } from '../src/admin/recent.js'
import { createMetrics, memoryLimit } from '../src/metrics.js'

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

t.test('request durations: the same exposition, text and JSON, as prom-client\'s own histogram fed the same values', async (t) => {
  const metrics = createMetrics()
  const registry = new Registry()
  const reference = new Histogram({
    name: 'sidecar_request_duration_seconds',
    help: 'Time from the request arriving to the last response byte written, by backend and route.',
    labelNames: ['backend', 'route'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  })
  // on a bound, between bounds, past the last one, zero; two backends, two routes
  const observed: Array<[string, string, number]> = [
    ['app', 'default', 0.001],
    ['app', 'default', 0.0011],
    ['app', 'default', 0],
    ['app', 'api', 31],
    ['canary', 'default', 0.3],
    ['app', 'default', 2.5],
  ]
  for (let i = 0; i < 200; i++) observed.push(['app', i % 3 ? 'default' : 'api', (i * 7919) % 40_000 / 1000])
  for (const [backend, route, seconds] of observed) {
    metrics.observeRequest(backend, 'GET', 200, seconds, route)
    reference.observe({ backend, route }, seconds)
  }
  const section = (text: string) => text.split('\n').filter((l) => l.includes('sidecar_request_duration_seconds')).join('\n')
  const ours = section(await metrics.registry.metrics())
  t.equal(ours, section(await registry.metrics()), 'the same text, line for line')
  t.match(ours, /^sidecar_request_duration_seconds_count\{backend="app",route="api"\} 68$/m)
  // exemplars are off: prom-client writes `exemplar: null` on its buckets, which the text leaves out
  const json = async (r: Registry) => {
    const m = (await r.getMetricsAsJSON()).find((m) => m.name === 'sidecar_request_duration_seconds') as { values: Array<Record<string, unknown>> }
    return { ...m, values: m.values.map(({ labels, value, metricName }) => ({ labels, value, metricName })) }
  }
  t.strictSame(await json(metrics.registry), await json(registry), 'and the same JSON')
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

t.test('the container memory limit: the cgroup\'s, or none when libuv finds none (0, or 2^64)', async (t) => {
  const GiB = 2 ** 30
  t.equal(memoryLimit(512 * 2 ** 20, 16 * GiB), 512 * 2 ** 20)
  t.equal(memoryLimit(0, 16 * GiB), undefined)
  t.equal(memoryLimit(2 ** 64, 16 * GiB), undefined, 'cgroup v2 "max" and v1 unlimited read as 2^64')
  const text = await createMetrics().exposition()
  const here = memoryLimit()
  if (here === undefined) t.notMatch(text.text, /^sidecar_memory_limit_bytes /m, 'no limit here: no sample, rather than a false one')
  else t.match(text.text, new RegExp(`^sidecar_memory_limit_bytes ${here}$`, 'm'))
})

/** A memory cgroup (v1 or v2) this test may make, or why not. */
const CGROUP_PARENTS = ['/sys/fs/cgroup/memory', '/sys/fs/cgroup']
const cgroupParent = CGROUP_PARENTS.find((dir) => {
  try {
    accessSync(dir, constants.W_OK)
    return existsSync(join(dir, 'memory.limit_in_bytes')) || existsSync(join(dir, 'cgroup.controllers'))
  } catch {
    return false
  }
})

t.test('in a container with a memory limit, sidecar_memory_limit_bytes is that limit', { skip: cgroupParent ? false : 'no writable memory cgroup here (needs root)' }, async (t) => {
  const dir = mkdtempSync(join(cgroupParent!, 'sidecar-test-'))
  t.teardown(() => rmdirSync(dir))
  const v1 = existsSync(join(dir, 'memory.limit_in_bytes'))
  writeFileSync(join(dir, v1 ? 'memory.limit_in_bytes' : 'memory.max'), String(512 * 2 ** 20))
  const metrics = new URL('../dist/metrics.js', import.meta.url).href
  const script = `import(${JSON.stringify(metrics)}).then(async (m) => process.stdout.write((await m.createMetrics().exposition()).text))`
  // the shell joins the cgroup, then becomes node: the process is in it from its first instruction
  const text = execFileSync('sh', ['-c', `echo $$ > ${join(dir, 'cgroup.procs')} && exec "${process.execPath}" --input-type=module -e '${script}'`], { encoding: 'utf8' })
  t.match(text, /^sidecar_memory_limit_bytes 536870912$/m)
})
