// The benchmark's verdicts (bench/report.mjs): what it says of an added p99 below the load
// generator's own jitter, and of a figure it could not measure. A verdict that reads "met" by
// accident (a negative added latency, a NaN ratio) is the failure these guard against.
import { fileURLToPath, pathToFileURL } from 'node:url'
import t from 'tap'

interface Report {
  generatorJitterMs(runs: Array<{ fixedP50: number; fixedP99: number }>): number
  addedP99(addedMs: number, jitterMs: number): number | string
  ratios(targets: unknown[], many: unknown, soak?: unknown): Array<{ what: string; value: number | null; pass: boolean | null; note?: string }>
  tlsRatios(tls: unknown, protocols?: unknown): Array<{ what: string; value: number | null; pass: boolean | null }>
  renderTls(tls: unknown): string
  renderProtocols(p: unknown): string
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
  t.match(rows.find((r) => /idle RSS .*30 s after start/.test(r.what)), { value: 62 / 55, target: '<= 1.1', pass: false })
  t.match(report.ratios([target('sidecar', { idleRssMiB: 88, settledRssMiB: 60 }), ...targets.slice(1)], { sidecar: { rssMiB: 120 }, 'bare-undici': { rssMiB: 110 } }).find((r) => /30 s after start/.test(r.what)), { pass: true }, '1.09x is within')
  t.match(rows.find((r) => /idle RSS .*2 s after start/.test(r.what)), { value: 88 / 60, target: 'reference', pass: null })
  const over = report.ratios([target('sidecar', { idleRssMiB: 70, settledRssMiB: 64 }), target('bare-undici', { idleRssMiB: 60, settledRssMiB: 55 }), target('http-proxy'), target('sidecar-tls'), target('sidecar-full')], { sidecar: { rssMiB: 1 }, 'bare-undici': { rssMiB: 1 } })
  t.match(over.find((r) => /idle RSS .*30 s after start/.test(r.what)), { value: 64 / 55, pass: false }, '1.16x is over')
  const older = report.ratios([target('sidecar'), target('bare-undici'), target('http-proxy'), target('sidecar-tls'), target('sidecar-full')], { sidecar: { rssMiB: 1 }, 'bare-undici': { rssMiB: 1 } })
  t.notOk(older.some((r) => /30 s after start/.test(r.what)), 'no row without the figure')
  t.match(older.find((r) => /idle RSS .*2 s after start/.test(r.what)), { target: '<= 1.1' }, 'a result without it is judged at 2 s')
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
  t.match(row(/RSS with 1,000 busy connections \/ bare/), { value: 120 / 110, pass: true }, 'within 1.1x the forwarder')
  t.match(row(/RSS with 1,000 busy connections \(MiB\)/), { value: 120, pass: null }, 'the figure itself: a reference')
  t.match(row(/throughput \/ bare undici/), { value: 2, pass: true })
  t.match(row(/20 routes/), { value: 37 / 36, pass: true }, 'a route table within 3% of none')
  t.match(report.ratios(targets.filter((x) => x.name !== 'sidecar-routes'), many).find((r) => /20 routes/.test(r.what)), { value: null, pass: null }, 'not run: no verdict')
  t.notOk(rows.some((r) => r.pass !== null && !Number.isFinite(r.value)), 'no verdict on a NaN or a missing figure')
  t.notOk(rows.some((r) => /connections to the app/.test(r.what)), 'no row for the connections to the app when not read')
  const counted = report.ratios(targets, { ...many, sidecar: { rssMiB: 120, upstreamConnections: 880 } })
  t.match(counted.find((r) => /connections to the app/.test(r.what)), { value: 880, target: 'reference', pass: null, digits: 0 }, 'a count, shown whole')
})

t.test('the TLS and protocol rows: each against its Node floor, against Caddy only where it ran', async (t) => {
  const tls = (caddy: boolean) => ({
    targets: [
      { name: 'sidecar', h2: 200, h1: 230, new: 1100, resumed: 800, idleKiBPerConnection: 40 },
      { name: 'floor', h2: 210, h1: 200, new: 1000, resumed: 800, idleKiBPerConnection: 45 },
      ...(caddy ? [{ name: 'caddy', h2: 250, h1: 220, new: 900, resumed: 500, idleKiBPerConnection: 30 }] : []),
    ],
  })
  const rows = report.tlsRatios(tls(true), { websocket: { cpuRatio: 1.2 }, grpcUnary: { cpuRatio: 1.4 } })
  const row = (what: RegExp) => rows.find((r) => what.test(r.what))!
  t.match(row(/TLS HTTP\/2: .* \/ Node TLS floor/), { value: 200 / 210, pass: true })
  t.match(row(/TLS HTTP\/1.1 keep-alive: .* \/ Node TLS floor/), { value: 1.15, pass: true }, '1.15x is within')
  t.match(row(/TLS HTTP\/1.1 keep-alive: .* \/ Caddy/), { value: 230 / 220, pass: false }, 'behind Caddy is missed')
  t.match(row(/new TLS connection/), { value: 1.1, pass: true })
  t.match(row(/idle TLS connection/), { value: 40 / 45, pass: true })
  t.match(row(/WebSocket/), { value: 1.2, pass: true })
  t.match(row(/gRPC/), { value: 1.4, pass: false })
  const without = report.tlsRatios(tls(false))
  t.notOk(without.some((r) => /Caddy|WebSocket|gRPC/.test(r.what)), 'no row for what did not run')
  t.equal(report.tlsRatios(undefined).length, 0, 'no h2load: no TLS rows')
  const nan = report.tlsRatios({ targets: [{ name: 'sidecar', h2: NaN, h1: 1, new: 1, resumed: 1, idleKiBPerConnection: 1 }, { name: 'floor', h2: 1, h1: 1, new: 1, resumed: 1, idleKiBPerConnection: 1 }] })
  t.match(nan.find((r) => /HTTP\/2/.test(r.what)), { value: null, pass: null }, 'a NaN is not measured, never met')
})

t.test('the TLS and protocol tables: each proxy beside the floor, its ratio to it', async (t) => {
  const table = report.renderTls({
    rate: 3000,
    handshakesPerSecond: 200,
    rounds: 3,
    seconds: 8,
    app: 'nginx return 200',
    pinned: true,
    targets: [
      { name: 'sidecar', h2: 200, h1: 230, new: 1100, resumed: 800, idleKiBPerConnection: 40 },
      { name: 'floor', h2: 250, h1: 200, new: 1000, resumed: 800, idleKiBPerConnection: 45 },
      { name: 'haproxy', h2: 50, h1: 60, new: null, resumed: 500, idleKiBPerConnection: 10 },
    ],
  })
  t.match(table, /\| sidecar \| 200 \(0\.80x\) \| 230 \(1\.15x\) \| 1100 \(1\.10x\) \| 800 \(1\.00x\) \| 40\.0 \|/)
  t.match(table, /\| Node floor \(http2 compat \+ undici\) \| 250 \| 200 \| 1000 \| 800 \| 45\.0 \|/, 'the floor: no ratio to itself')
  t.match(table, /\| haproxy \| 50 \(0\.20x\) \| 60 \(0\.30x\) \| - \| 500 \(0\.63x\) \|/, 'a figure missing is a dash, never 0')
  t.match(table, /3000 req\/s .* medians of 3 round\(s\) of 8 s; app: nginx return 200; each proxy pinned to one core/)
  const row = { direct: 1000, sidecar: 500, floor: 800, ratio: 0.5, cpuUs: 60, floorCpuUs: 50, cpuRatio: 1.2, errors: 0 }
  const protocols = report.renderProtocols({ clients: 32, seconds: 5, websocket: row, grpcUnary: { ...row, cpuRatio: 1.4 } })
  t.match(protocols, /\| WebSocket messages \(ws, plain\) \| 1000 \| 500 \| 800 \| 0\.50 \| 60 \| 50 \| 1\.20 \|/)
  t.match(protocols, /\| gRPC unary calls .* \| 1\.40 \|/)
  const older = report.renderProtocols({ clients: 32, seconds: 5, websocket: { direct: 1, sidecar: 1, ratio: 1, cpuUsPerMessage: 70 }, grpcUnary: { direct: 1, sidecar: 1, ratio: 1, cpuUsPerCall: 90 } })
  t.match(older, /\| 1\.00 \| 70 \| - \| - \|/, 'results from before the floor rows: their CPU, no floor')
})
