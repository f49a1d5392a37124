// The concurrency limit against an app of fixed capacity: `npm run build && node
// bench/concurrency.mjs [--seconds 30] [--clients 400] [--capacity 8] [--service-ms 20]`.
//
// 1. Overload: CLIENTS concurrent clients (hey, a native generator) for SECONDS against the app
//    (bench/servers/capacity-app.mjs: CAPACITY at once, SERVICE_MS each, the rest in its own
//    queue) through the sidecar without a limit, with an adaptive one, a fixed one of CAPACITY
//    and an adaptive one with a short maxWaitMs; each client sending again as soon as it is
//    answered (closed loop), then at a fixed rate (open loop, twice the app's capacity in all):
//    goodput (200s per second), p50/p99 of the answered requests, refusals, the peak of the
//    connections to the app, the sidecar's peak RSS.
// 2. The app slows down 2x at a third of the run and comes back at two thirds: the adaptive
//    limit, polled from /status every 250 ms, per phase.
// 3. A well-behaved app under light load (300 req/s, an app far from its capacity): CPU per
//    request with the limit off and on, interleaved rounds, and anything queued or refused.
// Each sidecar runs pinned to core 1, the app and the generator on core 0. Writes
// bench/results/concurrency-DATE.{json,md}.
import { execFile, execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { cpuSeconds, freePorts, median, memoryMiB, processes, waitReady, which } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values } = parseArgs({ options: { seconds: { type: 'string' }, clients: { type: 'string' }, capacity: { type: 'string' }, 'service-ms': { type: 'string' }, rounds: { type: 'string' } } })
const SECONDS = Number(values.seconds ?? 30)
const CLIENTS = Number(values.clients ?? 400)
const CAPACITY = Number(values.capacity ?? 8)
const SERVICE_MS = Number(values['service-ms'] ?? 20)
const ROUNDS = Number(values.rounds ?? 3)
if (!which('hey')) throw new Error('hey is needed (apt-get install hey): the load must come from a native generator')

const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-concurrency-'))
const { start } = processes(tmp)
/** Starts `node args`, resolving with its pid once `port` listens; every thread of it then
 *  pinned to `core`. */
async function startPinned(name, core, args, port) {
  const pid = await start(name, args, port)
  execFileSync('taskset', ['-a', '-p', '-c', String(core), String(pid)], { stdio: 'ignore' })
  return pid
}

const [appPort, fastPort, ...sidecarPorts] = await freePorts(14)
await startPinned('app', 0, [join(root, 'bench/servers/capacity-app.mjs'), String(appPort), String(CAPACITY), String(SERVICE_MS)], appPort)
await startPinned('fast-app', 0, [join(root, 'bench/servers/capacity-app.mjs'), String(fastPort), '100000', '1'], fastPort)

let next = 0
/** A plain-HTTP sidecar in front of `appPort` with `backend` settings, pinned to core 1. */
async function sidecar(name, port, backend = {}) {
  const [listen, admin] = [sidecarPorts[next++], sidecarPorts[next++]]
  const file = join(tmp, `${name}.json`)
  const config = { listener: { address: `127.0.0.1:${listen}`, tls: false }, admin: { address: `127.0.0.1:${admin}` }, log: { accessLog: false }, backends: [{ name: 'app', url: `http://127.0.0.1:${port}`, ...backend }] }
  writeFileSync(file, JSON.stringify(config))
  const pid = await startPinned(name, 1, [join(root, 'dist/main.js'), '--config', file], listen)
  await waitReady(admin)
  return { name, pid, url: `http://127.0.0.1:${listen}/`, admin: `http://127.0.0.1:${admin}` }
}

/** hey's per-request CSV: [seconds, status] each. */
function hey(args) {
  return new Promise((resolve, reject) => {
    execFile('taskset', ['-c', '0', 'hey', '-o', 'csv', ...args], { maxBuffer: 1 << 30 }, (err, stdout) => {
      if (err) return reject(err)
      resolve(
        stdout
          .split('\n')
          .slice(1)
          .filter(Boolean)
          .map((line) => line.split(','))
          .map((f) => [Number(f[0]), Number(f[6])]),
      )
    })
  })
}

const get = (url) => fetch(url).then((r) => r.json())
const post = (url) => fetch(url, { method: 'POST' }).then((r) => r.json())
const quantile = (xs, q) => (xs.length === 0 ? null : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(q * xs.length) - 1)])

/** CLIENTS clients for `seconds` through `target`, each as fast as it is answered (closed loop)
 *  or at `perClient` requests per second (open loop); with `during`, called once the load runs. */
async function overload(target, seconds, { during, perClient } = {}) {
  let peakRss = 0
  let peakConnections = 0
  const sampling = setInterval(() => {
    peakRss = Math.max(peakRss, memoryMiB(target.pid, 'VmRSS'))
    get(`${target.admin}/status`).then((s) => (peakConnections = Math.max(peakConnections, s.backends[0].connections)), () => {})
  }, 100)
  const load = hey(['-z', `${seconds}s`, '-c', String(CLIENTS), ...(perClient ? ['-q', String(perClient)] : []), '-disable-compression', target.url])
  const series = during ? await during() : undefined
  const results = await load
  clearInterval(sampling)
  const ok = results.filter(([, status]) => status === 200).map(([s]) => s * 1000)
  const byStatus = {}
  for (const [, status] of results) byStatus[status] = (byStatus[status] ?? 0) + 1
  // idle connections to the app close after backends[].idleTimeoutMs (4 s): the next run starts clean
  await new Promise((resolve) => setTimeout(resolve, 5000))
  return { name: target.name, goodput: ok.length / seconds, p50: quantile(ok, 0.5), p99: quantile(ok, 0.99), byStatus, appConnectionsPeak: peakConnections, peakRssMiB: peakRss, series }
}

const adaptive = { concurrency: { adaptive: {} } }
const targets = [
  await sidecar('unlimited', appPort),
  await sidecar('adaptive', appPort, adaptive),
  await sidecar(`fixed ${CAPACITY}`, appPort, { concurrency: { fixed: CAPACITY } }),
  // a short wait: what is answered stays fast, the rest is refused sooner (and comes back sooner)
  await sidecar('adaptive, maxWaitMs 100', appPort, { concurrency: { adaptive: {}, maxWaitMs: 100 } }),
]
const unloaded = (await hey(['-n', '200', '-c', '1', `http://127.0.0.1:${appPort}/`])).map(([s]) => s * 1000)

// 1. overload: closed loop (each client sends again as soon as it is answered, 503 or not),
// then open loop at twice the app's capacity (each client at a fixed rate, as users behind an
// ingress arrive whatever the answers)
const overloadRuns = []
for (const target of targets) overloadRuns.push({ loop: 'closed', ...(await overload(target, SECONDS)) })
const perClient = Math.max(1, Math.round((2 * CAPACITY * 1000) / SERVICE_MS / CLIENTS))
for (const target of targets) overloadRuns.push({ loop: `open, ${perClient * CLIENTS}/s`, ...(await overload(target, SECONDS, { perClient })) })

// 2. the app slows down 2x for the middle third
const third = (SECONDS * 1000) / 3
const slowdown = await overload(targets[1], SECONDS, { perClient, during: async () => {
  const series = []
  const started = Date.now()
  let phase = 'normal'
  while (Date.now() - started < SECONDS * 1000 - 250) {
    const elapsed = Date.now() - started
    const wanted = elapsed < third ? 'normal' : elapsed < 2 * third ? 'slow' : 'back'
    if (wanted !== phase) await post(`http://127.0.0.1:${appPort}/__slow?x=${wanted === 'slow' ? 2 : 1}`)
    phase = wanted
    const status = await get(`${targets[1].admin}/status`)
    series.push({ ms: elapsed, phase, limit: status.backends[0].concurrency?.limit, minRttMs: status.backends[0].concurrency?.minRttMs })
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  await post(`http://127.0.0.1:${appPort}/__slow?x=1`)
  return series
} })
const phases = ['normal', 'slow', 'back'].map((phase) => {
  const points = slowdown.series.filter((p) => p.phase === phase)
  const settled = median(points.slice(-8).map((p) => p.limit)) // its last two seconds
  const firstNear = points.find((p) => Math.abs(p.limit - settled) <= Math.max(2, settled * 0.3))
  return { phase, limitMedian: median(points.map((p) => p.limit)), settled, settledAfterMs: firstNear ? firstNear.ms - points[0].ms : null, minRttMs: points.at(-1)?.minRttMs }
})

// 3. light load, a well-behaved app: CPU per request with the limit off and on
const light = [await sidecar('light, limit off', fastPort), await sidecar('light, adaptive', fastPort, adaptive)]
const cpu = new Map(light.map((t) => [t.name, []]))
const refusedLight = new Map(light.map((t) => [t.name, 0]))
for (let round = 0; round < ROUNDS; round++) {
  for (const target of light) {
    const before = cpuSeconds(target.pid)
    const results = await hey(['-z', '8s', '-c', '4', '-q', '75', target.url])
    cpu.get(target.name).push(((cpuSeconds(target.pid) - before) * 1e6) / results.length)
    refusedLight.set(target.name, refusedLight.get(target.name) + results.filter(([, s]) => s !== 200).length)
  }
}
const lightRows = light.map((t) => ({ name: t.name, usPerRequest: median(cpu.get(t.name)), rounds: cpu.get(t.name), notOk: refusedLight.get(t.name) }))

const stamp = new Date().toISOString().replace(/[-:]/g, '').slice(0, 13).replace('T', '-')
const result = { date: new Date().toISOString(), node: process.version, cores: os.cpus().length, clients: CLIENTS, seconds: SECONDS, capacity: CAPACITY, serviceMs: SERVICE_MS, unloadedP50Ms: quantile(unloaded, 0.5), overload: overloadRuns, slowdown: { phases, series: slowdown.series, goodput: slowdown.goodput, p99: slowdown.p99 }, light: lightRows }
const fmt = (x, d = 0) => (x === null || x === undefined ? '-' : x.toFixed(d))
const md = [
  `Concurrency limit against an app of capacity ${CAPACITY} x ${SERVICE_MS} ms (unloaded p50 ${fmt(result.unloadedP50Ms, 1)} ms), ${CLIENTS} clients (hey) for ${SECONDS} s, ${result.date.slice(0, 10)}, ${result.cores} cores, Node ${process.version}; sidecar on core 1, app and generator on core 0.`,
  '',
  '| load | sidecar | goodput (200/s) | p50 ms | p99 ms (answered) | statuses | connections to the app (peak) | peak RSS MiB |',
  '|---|---|---|---|---|---|---|---|',
  ...overloadRuns.map((r) => `| ${r.loop} | ${r.name} | ${fmt(r.goodput)} | ${fmt(r.p50)} | ${fmt(r.p99)} | ${Object.entries(r.byStatus).map(([s, n]) => `${s}: ${n}`).join(', ')} | ${r.appConnectionsPeak} | ${fmt(r.peakRssMiB)} |`),
  '',
  `The app 2x slower for the middle third (adaptive, open loop at ${perClient * CLIENTS}/s): goodput ${fmt(slowdown.goodput)}/s, p99 ${fmt(slowdown.p99)} ms.`,
  '',
  '| phase | limit (median) | settled (last 2 s) | settled after ms | minimum latency ms |',
  '|---|---|---|---|---|',
  ...phases.map((p) => `| ${p.phase} | ${fmt(p.limitMedian)} | ${fmt(p.settled)} | ${fmt(p.settledAfterMs)} | ${fmt(p.minRttMs, 1)} |`),
  '',
  `Light load (300 req/s, an app far from its capacity), ${ROUNDS} interleaved rounds of 8 s:`,
  '',
  '| sidecar | CPU us/request (median) | rounds | not 200 |',
  '|---|---|---|---|',
  ...lightRows.map((r) => `| ${r.name} | ${fmt(r.usPerRequest, 1)} | ${r.rounds.map((x) => fmt(x, 1)).join(', ')} | ${r.notOk} |`),
  '',
]
mkdirSync(join(root, 'bench/results'), { recursive: true })
writeFileSync(join(root, `bench/results/concurrency-${stamp}.json`), JSON.stringify(result, null, 2) + '\n')
writeFileSync(join(root, `bench/results/concurrency-${stamp}.md`), md.join('\n'))
console.log(md.join('\n'))
process.exit(0)
