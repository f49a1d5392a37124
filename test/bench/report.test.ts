// The benchmark's verdicts (bench/report.mjs): what it says of an added p99 below the load
// generator's own jitter, and of a figure it could not measure. A verdict that reads "met" by
// accident (a negative added latency, a NaN ratio) is the failure these guard against.
import { fileURLToPath, pathToFileURL } from 'node:url'
import t from 'tap'

interface Report {
  generatorJitterMs(runs: Array<{ fixedP50: number; fixedP99: number }>): number
  addedP99(addedMs: number, jitterMs: number): number | string
  ratios(targets: unknown[], many: unknown, soak?: unknown): Array<{ what: string; value: number | null; pass: boolean | null; note?: string }>
}
const REPORT = pathToFileURL(fileURLToPath(new URL('../../bench/report.mjs', import.meta.url))).href
const report = (await import(REPORT)) as Report

t.test("the generator's jitter: its p99 over its p50, or its p99's spread over the rounds", async (t) => {
  t.equal(report.generatorJitterMs([{ fixedP50: 1, fixedP99: 9 }]), 8)
  t.equal(report.generatorJitterMs([{ fixedP50: 1, fixedP99: 2 }, { fixedP50: 1, fixedP99: 12 }, { fixedP50: 1, fixedP99: 3 }]), 10, 'the spread, when larger')
})

t.test('an added p99 within the jitter is said to be not resolvable, never a number', async (t) => {
  t.equal(report.addedP99(12, 8), 12)
  t.match(report.addedP99(3, 8), /^not resolvable on this machine \(generator jitter 8 ms\)$/)
  t.match(report.addedP99(-4, 8), /not resolvable/, 'a negative added p99 is noise, not a result')
  t.match(report.addedP99(Number.NaN, 0), /not resolvable/)
})

function target(name: string, over: Record<string, unknown> = {}) {
  return { name, rps: 10_000, h2Rps: null, idleRssMiB: 60, fixedRate: { cpuUsPerRequest: 30, upstreamUsPerRequest: 20, addedP99Ms: 'not resolvable on this machine (generator jitter 8 ms)' }, latencyMs: {}, ...over }
}

t.test('idle RSS is judged 30 s after start; the 2-s figure is shown beside it, unjudged (older results: judged at 2 s)', async (t) => {
  const targets = [target('sidecar', { idleRssMiB: 88, settledRssMiB: 62 }), target('bare-undici', { idleRssMiB: 60, settledRssMiB: 55 }), target('http-proxy'), target('sidecar-tls'), target('sidecar-full')]
  const rows = report.ratios(targets, { sidecar: { rssMiB: 120 }, 'bare-undici': { rssMiB: 110 } })
  t.match(rows.find((r) => /idle RSS .*30 s after start/.test(r.what)), { value: 62 / 55, target: '<= 1.15', pass: true })
  t.match(rows.find((r) => /idle RSS .*2 s after start/.test(r.what)), { value: 88 / 60, target: 'reference', pass: null })
  const over = report.ratios([target('sidecar', { idleRssMiB: 70, settledRssMiB: 64 }), target('bare-undici', { idleRssMiB: 60, settledRssMiB: 55 }), target('http-proxy'), target('sidecar-tls'), target('sidecar-full')], { sidecar: { rssMiB: 1 }, 'bare-undici': { rssMiB: 1 } })
  t.match(over.find((r) => /idle RSS .*30 s after start/.test(r.what)), { value: 64 / 55, pass: false }, '1.16x is over')
  const older = report.ratios([target('sidecar'), target('bare-undici'), target('http-proxy'), target('sidecar-tls'), target('sidecar-full')], { sidecar: { rssMiB: 1 }, 'bare-undici': { rssMiB: 1 } })
  t.notOk(older.some((r) => /30 s after start/.test(r.what)), 'no row without the figure')
  t.match(older.find((r) => /idle RSS .*2 s after start/.test(r.what)), { target: '<= 1.15' }, 'a result without it is judged at 2 s')
})

t.test('ratios: verdicts against the targets, none for what was not measured', async (t) => {
  const targets = [
    target('sidecar', { rps: 20_000, fixedRate: { cpuUsPerRequest: 36, upstreamUsPerRequest: 20, addedP99Ms: 'not resolvable on this machine (generator jitter 8 ms)' }, idleRssMiB: 66 }),
    target('bare-undici'),
    target('http-proxy'),
    target('sidecar-tls'),
    target('sidecar-full'),
    target('sidecar-routes', { fixedRate: { cpuUsPerRequest: 37, upstreamUsPerRequest: 20, addedP99Ms: null } }),
  ]
  const many = { sidecar: { rssMiB: 120 }, 'bare-undici': { rssMiB: 110 } }
  const rows = report.ratios(targets, many)
  const row = (what: RegExp) => rows.find((r) => what.test(r.what))!
  t.match(row(/CPU per request \/ bare/), { value: 1.2, pass: true })
  t.match(row(/throughput \/ node http-proxy/), { value: 2, pass: true })
  t.match(row(/added p99/), { value: null, pass: null, note: /not resolvable/ }, 'no verdict on what cannot be resolved')
  t.match(row(/TLS keep-alive throughput \/ nginx/), { value: null, pass: null }, 'nginx absent: not measured, not met')
  t.match(row(/idle RSS/), { value: 1.1, pass: true })
  t.match(row(/RSS with 1,000 busy connections \(MiB\)/), { value: 120, pass: false })
  t.match(row(/20 routes/), { value: 37 / 36, pass: true }, 'a route table within 3% of none')
  t.match(report.ratios(targets.filter((x) => x.name !== 'sidecar-routes'), many).find((r) => /20 routes/.test(r.what)), { value: null, pass: null }, 'not run: no verdict')
  t.notOk(rows.some((r) => r.pass !== null && !Number.isFinite(r.value)), 'no verdict on a NaN or a missing figure')
  t.notOk(rows.some((r) => /connections to the app/.test(r.what)), 'no row for the connections to the app when not read')
  const counted = report.ratios(targets, { ...many, sidecar: { rssMiB: 120, upstreamConnections: 880 } })
  t.match(counted.find((r) => /connections to the app/.test(r.what)), { value: 880, target: 'reference', pass: null, digits: 0 }, 'a count, shown whole')
})
