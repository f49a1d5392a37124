// The load-test harness: `npm run bench` (about 20 minutes), `npm run bench -- --quick` (about two
// minutes), `npm run bench -- --soak` (adds the 5-minute memory soak).
//
// One fast upstream on loopback, then every target in its own process, measured in the same run
// and interleaved round by round so that drift of the machine hits all of them alike:
//   direct             the load generator -> upstream (the physical limit)
//   sidecar            sidecar-proxy, plain HTTP, default layers, access log written to a file
//   sidecar-tls        sidecar-proxy over TLS, keep-alive connections (and HTTP/2 by h2load)
//   sidecar-tls-new    sidecar-proxy over TLS, one handshake per request (a client of our own:
//                      autocannon's reconnectRate drops the response it reconnects after), at
//                      a fixed rate of HANDSHAKE_RATE
//   sidecar-full       sidecar-proxy with retries, breaker and a 90/10 canary split
//   sidecar-routes     the plain sidecar with a table of 20 routes, the request matching the last
//   sidecar-mirror     the plain sidecar copying every request to a second local app (a shadow)
//   sidecar-trace-0.01 sidecar, tracing on at sampleRatio 0.01 (the default), exporting OTLP
//   sidecar-trace-1    sidecar, tracing on, every request sampled (a SERVER and a CLIENT span
//                      each), both exporting to a collector stand-in (bench/servers/otlp-sink.mjs)
//   bare-undici        node:http + undici's Pool.dispatch with a raw handler (bench/servers/
//                      bare-undici.mjs): the floor of any Node proxy
//   http-proxy         node http-proxy 1.18.1 with a keep-alive agent
//   nginx, nginx-tls   when nginx is installed (one worker, like Node's one thread)
// and, apart: WebSocket messages and gRPC unary calls through the sidecar against the same echo
// servers reached directly and through their Node floors (bench/protocols.mjs); the TLS rows
// at a fixed rate against the Node TLS floor, Caddy, nginx and HAProxy (bench/tls.mjs, with
// h2load), which the results lead with.
// For each:
// - requests/s at saturation (64 connections) and its latency, by wrk when it is installed (a
//   native generator: autocannon, JavaScript, takes a core of its own on a small machine and
//   caps what it can show), with autocannon's figure beside it; h2load for HTTP/2 over TLS;
// - at a fixed rate (autocannon), the CPU time per request of the target process and of the
//   upstream app (from /proc/PID/stat), and the p99 it adds over direct: reported only when it
//   exceeds the generator's own jitter, which on a shared 2-core machine it often does not;
// - RSS: idle 2 s and 30 s after start (the one judged), with 1,000 busy keep-alive connections,
//   and the peak, for the sidecar beside the bare forwarder.
// Medians over the rounds. Results go to bench/results/ as JSON, Markdown and SVG.
import { execFile, spawn } from 'node:child_process'
import https from 'node:https'
import { mkdtempSync, openSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { IMAGE_ENV, cpuSeconds, freePort, listening, median, memoryMiB, nginxWorker, waitReady, which } from './lib.mjs'
import { measureProtocols } from './protocols.mjs'
import { addedP99, generatorJitterMs, ratios, renderMarkdown, renderSvg, tlsRatios } from './report.mjs'
import { measureTls } from './tls.mjs'

const root = new URL('..', import.meta.url).pathname
const { values: flags } = parseArgs({
  options: { quick: { type: 'boolean' }, soak: { type: 'boolean' }, rate: { type: 'string' }, rounds: { type: 'string' } },
})
const PLAN = flags.quick
  ? { rounds: 1, saturateS: 3, fixedS: 3, warmS: 1, manyS: 3 }
  : { rounds: 3, saturateS: 10, fixedS: 10, warmS: 2, manyS: 10 }
if (flags.rounds) PLAN.rounds = Number(flags.rounds)
const RATE = Number(flags.rate ?? 5000)
const CONNECTIONS = 64
const HANDSHAKE_RATE = 200
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-bench-'))
const children = []

// nginx's master takes its workers down on SIGTERM (SIGKILL would orphan them); the rest go at once
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill(c.spawnfile.endsWith('nginx') ? 'SIGTERM' : 'SIGKILL')))
process.on('SIGINT', () => process.exit(130))

/** Starts a process whose output goes to a file; resolves once `port` accepts connections. */
async function start(name, command, args, port, env = {}) {
  const out = openSync(join(tmp, `${name}.log`), 'a')
  const child = spawn(command, args, { stdio: ['ignore', out, out], env: { ...process.env, ...(command === process.execPath && IMAGE_ENV), ...env } })
  children.push(child)
  child.on('exit', (code, signal) => {
    if (!stopping) console.error(`${name} exited (${code ?? signal}); its log: ${join(tmp, `${name}.log`)}`)
  })
  await listening(port)
  return child.pid
}
let stopping = false

const load = (url, opts) => (opts.newConnections ? handshakes(url, opts) : autocannon({ url, connections: CONNECTIONS, ...opts }))
const WRK = which('wrk')
const H2LOAD = which('h2load')

/** `cmd args`'s standard output (its failure is the bench's). */
const run = (cmd, args) =>
  new Promise((resolve, reject) => execFile(cmd, args, { maxBuffer: 1 << 20 }, (err, stdout) => (err ? reject(err) : resolve(stdout))))

/** wrk's "3.95ms" / "812.00us" / "1.02s" in milliseconds. */
function wrkMs(text) {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text)
  return m ? Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]] : NaN
}

/** Saturation by wrk (one thread, CONNECTIONS connections), in autocannon's result shape. */
async function wrk(url, seconds) {
  const out = await run(WRK, ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency', url])
  const pct = (p) => wrkMs(new RegExp(`^\\s+${p}%\\s+(\\S+)`, 'm').exec(out)?.[1] ?? '')
  const errors = [...(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out) ?? [])].slice(1).reduce((a, b) => a + Number(b), 0)
  return {
    requests: { average: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN) },
    latency: { p50: pct(50), p90: pct(90), p99: pct(99), max: wrkMs(/Latency\s+\S+\s+\S+\s+(\S+)/.exec(out)?.[1] ?? '') },
    errors: errors + Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
    timeouts: 0,
    non2xx: 0,
  }
}

/** HTTP/2 over TLS at saturation by h2load: 16 connections, 10 streams each; req/s and failures. */
async function h2load(url, seconds) {
  const out = await run(H2LOAD, ['-c16', '-m10', `-D${seconds}`, url])
  const [, , , , succeeded, failed, errored] = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out) ?? []
  return { rps: Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1] ?? NaN), succeeded: Number(succeeded), errors: Number(failed) + Number(errored) }
}

/** Requests on a new TLS connection each, in autocannon's result shape. */
async function handshakes(url, { duration, overallRate, newConnections }) {
  const latencies = []
  let errors = 0
  const end = Date.now() + duration * 1000
  const started = Date.now()
  const once = () =>
    new Promise((resolve) => {
      const t0 = performance.now()
      https
        .get(url, { agent: false, rejectUnauthorized: false }, (res) => {
          res.resume().on('end', () => {
            if (res.statusCode === 200) latencies.push(performance.now() - t0)
            else errors++
            resolve()
          })
        })
        .on('error', () => resolve(errors++))
    })
  const worker = async (i) => {
    for (let n = 0; Date.now() < end; n++) {
      if (overallRate) {
        const due = started + ((n * newConnections + i) * 1000) / overallRate
        if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()))
        if (Date.now() >= end) break
      }
      await once()
    }
  }
  await Promise.all(Array.from({ length: newConnections }, (_, i) => worker(i)))
  latencies.sort((a, b) => a - b)
  const at = (q) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0)
  return {
    requests: { total: latencies.length, average: latencies.length / duration },
    latency: { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: Math.round(latencies.at(-1) ?? 0) },
    errors,
    timeouts: 0,
    non2xx: 0,
  }
}

async function main() {
  const upstreamPort = await freePort()
  const upstreamPid = await start('upstream', process.execPath, [join(root, 'bench/servers/upstream.mjs'), String(upstreamPort)], upstreamPort)
  const upstream = `http://127.0.0.1:${upstreamPort}`
  const certs = { certFile: join(root, 'certs/tls.crt'), keyFile: join(root, 'certs/tls.key') }

  const sidecar = async (name, config) => {
    const port = await freePort()
    const admin = await freePort()
    const file = join(tmp, `${name}.yaml`)
    writeFileSync(file, JSON.stringify({ ...config, listener: { address: `127.0.0.1:${port}`, ...config.listener }, admin: { address: `127.0.0.1:${admin}` } }))
    // stdout (the JSON access log) goes to a file, as in production it goes to the node's log pipe
    const pid = await start(name, process.execPath, [join(root, 'dist/main.js'), '--config', file], port)
    await waitReady(admin)
    return { pid, port, admin }
  }
  const app = { name: 'app', url: upstream, weight: 100 }
  const targets = []
  const add = (name, pid, url, extra = {}) => targets.push({ name, pid, url, ...extra, runs: [] })

  add('direct', undefined, upstream)
  let s = await sidecar('sidecar', { listener: { tls: false }, backends: [app] })
  add('sidecar', s.pid, `http://127.0.0.1:${s.port}/`, { admin: s.admin })
  // The headline ratios' other terms right after the sidecar in each round: ten targets apart,
  // the two sides of a ratio were measured minutes apart, and the machine's drift between them
  // moved the CPU ratio between 1.2 and 1.5 from one full run to the next.
  let port = await freePort()
  add('bare-undici', await start('bare-undici', process.execPath, [join(root, 'bench/servers/bare-undici.mjs'), String(port), upstream], port), `http://127.0.0.1:${port}/`)
  port = await freePort()
  add('http-proxy', await start('http-proxy', process.execPath, [join(root, 'bench/servers/http-proxy.mjs'), String(port), upstream], port), `http://127.0.0.1:${port}/`)
  s = await sidecar('sidecar-tls', { listener: { tls: certs, http2: true }, backends: [app] })
  add('sidecar-tls', s.pid, `https://127.0.0.1:${s.port}/`, { tls: true, h2: true })
  add('sidecar-tls-new', s.pid, `https://127.0.0.1:${s.port}/`, { tls: true, newConnections: 16, rate: HANDSHAKE_RATE })
  s = await sidecar('sidecar-full', {
    listener: { tls: false },
    backends: [{ ...app, weight: 90 }, { name: 'canary', url: upstream, weight: 10 }],
    retry: { attempts: 3, perTryTimeoutMs: 1000, retryOn: ['connect-failure', 'refused', 'reset', 'gateway-error', 'retriable-status-codes'], statusCodes: [503] },
    circuitBreaker: { volumeThreshold: 20 },
  })
  add('sidecar-full', s.pid, `http://127.0.0.1:${s.port}/`)
  s = await sidecar('sidecar-routes', { listener: { tls: false }, backends: [app], routes: twentyRoutes() })
  add('sidecar-routes', s.pid, `http://127.0.0.1:${s.port}/`)
  const shadowPort = await freePort()
  await start('shadow', process.execPath, [join(root, 'bench/servers/upstream.mjs'), String(shadowPort)], shadowPort)
  s = await sidecar('sidecar-mirror', {
    listener: { tls: false },
    backends: [app, { name: 'shadow', url: `http://127.0.0.1:${shadowPort}`, weight: 0 }],
    mirror: { backend: 'shadow', percent: 100 },
  })
  add('sidecar-mirror', s.pid, `http://127.0.0.1:${s.port}/`)
  const sinkPort = await freePort()
  await start('otlp-sink', process.execPath, [join(root, 'bench/servers/otlp-sink.mjs'), String(sinkPort)], sinkPort)
  for (const sampleRatio of [0.01, 1]) {
    s = await sidecar(`sidecar-trace-${sampleRatio}`, { listener: { tls: false }, backends: [app], tracing: { otlp: { endpoint: `http://127.0.0.1:${sinkPort}` }, sampleRatio } })
    add(`sidecar-trace-${sampleRatio}`, s.pid, `http://127.0.0.1:${s.port}/`)
  }
  const nginx = which('nginx')
  if (nginx) {
    const [plain, tls] = [await freePort(), await freePort()]
    writeFileSync(join(tmp, 'nginx.conf'), nginxConfig(plain, tls, upstreamPort, certs))
    const pid = await start('nginx', nginx, ['-p', tmp, '-c', join(tmp, 'nginx.conf'), '-e', join(tmp, 'nginx-error.log')], plain)
    add('nginx', pid, `http://127.0.0.1:${plain}/`, { workerOf: pid })
    add('nginx-tls', pid, `https://127.0.0.1:${tls}/`, { tls: true, h2: true, workerOf: pid })
  }

  // Idle RSS: every target started, nothing sent yet but the readiness checks; 2 s after the last
  // start (what start-up holds, shown) and 30 s after it (the figure judged: what an idle pod
  // keeps). The sidecar hands back start-up's young generation once started (lifecycle/settle.ts):
  // at once on Node 22 and later, through V8's memory reducer some 8 s later on Node 20.
  const rssOf = (t) => (t.pid ? memoryMiB(t.workerOf ? nginxWorker(t.workerOf) : t.pid, 'VmRSS') : null)
  await new Promise((resolve) => setTimeout(resolve, 2000))
  for (const t of targets) t.idleRssMiB = rssOf(t)
  await new Promise((resolve) => setTimeout(resolve, 28_000))
  for (const t of targets) t.settledRssMiB = rssOf(t)

  const generator = WRK ? 'wrk' : 'autocannon'
  console.log(`${targets.length} targets, ${PLAN.rounds} round(s): ${PLAN.saturateS} s at saturation (${CONNECTIONS} connections, ${generator}${WRK ? ' and autocannon' : ''}${H2LOAD ? '; h2load for HTTP/2' : ''}) and ${PLAN.fixedS} s at ${RATE} req/s each`)
  for (const t of targets) await load(t.url, { duration: PLAN.warmS, newConnections: t.newConnections }) // warm-up: JIT, pools
  for (let round = 1; round <= PLAN.rounds; round++) {
    for (const t of targets) {
      const saturate = () => (WRK && !t.newConnections ? wrk(t.url, PLAN.saturateS) : load(t.url, { duration: PLAN.saturateS, newConnections: t.newConnections }))
      const sat = await saturate()
      const ac = WRK && !t.newConnections ? await load(t.url, { duration: PLAN.saturateS }) : sat
      const h2 = t.h2 && H2LOAD ? await h2load(t.url, PLAN.saturateS) : null
      const pid = t.workerOf ? nginxWorker(t.workerOf) : t.pid
      const cpuBefore = pid ? cpuSeconds(pid) : 0
      const upstreamBefore = cpuSeconds(upstreamPid)
      const rate = t.rate ?? RATE
      const fixed = await load(t.url, { duration: PLAN.fixedS, overallRate: rate, newConnections: t.newConnections })
      const cpu = pid ? cpuSeconds(pid) - cpuBefore : NaN
      const upstreamCpu = cpuSeconds(upstreamPid) - upstreamBefore
      t.runs.push({
        rps: sat.requests.average,
        autocannonRps: ac.requests.average,
        h2Rps: h2?.rps ?? null,
        p50: sat.latency.p50,
        p90: sat.latency.p90,
        p99: sat.latency.p99,
        max: sat.latency.max,
        errors: sat.errors + sat.timeouts + sat.non2xx + (ac === sat ? 0 : ac.errors + ac.timeouts + ac.non2xx) + (h2?.errors ?? 0) + fixed.errors + fixed.timeouts + fixed.non2xx,
        fixedRps: fixed.requests.average,
        fixedP50: fixed.latency.p50,
        fixedP99: fixed.latency.p99,
        cpuUsPerRequest: (cpu / fixed.requests.total) * 1e6,
        upstreamUsPerRequest: (upstreamCpu / fixed.requests.total) * 1e6,
      })
      const r = t.runs.at(-1)
      console.log(
        `round ${round} ${t.name.padEnd(16)} ${Math.round(r.rps).toString().padStart(6)} req/s (${t.newConnections ? 'a handshake each' : generator}${h2 ? `; h2 ${Math.round(h2.rps)}` : ''})  p99 ${r.p99} ms  | at ${rate}/s: ${r.cpuUsPerRequest.toFixed(0)} us CPU/req (app ${r.upstreamUsPerRequest.toFixed(0)}), p99 ${r.fixedP99} ms`,
      )
    }
  }

  // 1,000 busy keep-alive connections, on the plain sidecar and on the bare forwarder
  const manyConnections = {}
  for (const name of ['sidecar', 'bare-undici']) {
    const t = targets.find((x) => x.name === name)
    const many = await autocannon({ url: t.url, connections: 1000, duration: PLAN.manyS, overallRate: RATE })
    manyConnections[name] = { connections: 1000, rssMiB: memoryMiB(t.pid, 'VmRSS'), errors: many.errors + many.timeouts + many.non2xx }
    // how many connections to the app the burst opened (the forwarder's pool stops at 128)
    if (t.admin) manyConnections[name].upstreamConnections = await upstreamConnections(t.admin)
    console.log(`1,000 connections: ${name} RSS ${manyConnections[name].rssMiB.toFixed(1)} MiB, ${manyConnections[name].errors} errors${t.admin ? `, ${manyConnections[name].upstreamConnections} connections to the app` : ''}`)
  }

  const plainSidecar = targets.find((t) => t.name === 'sidecar')
  const soak = flags.soak ? await runSoak(plainSidecar) : undefined

  // WebSocket messages and gRPC unary calls: the sidecar against the same echo servers direct
  // and against their Node floors
  const protocols = await measureProtocols({ seconds: flags.quick ? 2 : PLAN.saturateS })
  // the path users run: TLS, HTTP/2 and HTTP/1.1, new and resumed handshakes, at a fixed rate
  const tls = H2LOAD ? await measureTls({ quick: flags.quick, rounds: PLAN.rounds }) : undefined

  const direct = targets.find((t) => t.name === 'direct')
  const m = (t, key) => median(t.runs.map((r) => r[key]))
  const jitterMs = generatorJitterMs(direct.runs)
  const results = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, kernel: os.release() },
    plan: { ...PLAN, connections: CONNECTIONS, fixedRate: RATE, generator, h2load: Boolean(H2LOAD) },
    targets: targets.map((t) => {
      return {
        name: t.name,
        rps: m(t, 'rps'),
        autocannonRps: m(t, 'autocannonRps'),
        h2Rps: m(t, 'h2Rps'),
        latencyMs: { p50: m(t, 'p50'), p90: m(t, 'p90'), p99: m(t, 'p99'), max: m(t, 'max') },
        errors: t.runs.reduce((n, r) => n + r.errors, 0),
        fixedRate: {
          rate: t.rate ?? RATE,
          rps: m(t, 'fixedRps'),
          p99Ms: m(t, 'fixedP99'),
          // over plain HTTP only: direct is plain, and at this rate the generator's own TLS work
          // dominates a TLS target's latency
          addedP99Ms: t === direct || t.rate || t.tls ? null : addedP99(m(t, 'fixedP99') - m(direct, 'fixedP99'), jitterMs),
          cpuUsPerRequest: t.pid ? m(t, 'cpuUsPerRequest') : null,
          upstreamUsPerRequest: m(t, 'upstreamUsPerRequest'),
        },
        idleRssMiB: t.idleRssMiB,
        settledRssMiB: t.settledRssMiB,
        peakRssMiB: t.pid ? memoryMiB(t.workerOf ? nginxWorker(t.workerOf) : t.pid, 'VmHWM') : null,
      }
    }),
    manyConnections,
    soak,
    protocols,
    tls,
  }
  results.ratios = [...tlsRatios(tls, protocols), ...ratios(results.targets, manyConnections, soak)]
  stopping = true
  const stamp = results.date.slice(0, 16).replace(/[-:]/g, '').replace('T', '-')
  const dir = join(root, 'bench/results')
  const name = flags.quick ? 'quick' : `${stamp}`
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(results, null, 2) + '\n')
  writeFileSync(join(dir, `${name}.md`), renderMarkdown(results))
  writeFileSync(join(dir, `${name}.svg`), renderSvg(results))
  console.log('\n' + renderMarkdown(results))
  console.log(`written: bench/results/${name}.{json,md,svg}`)
  process.exit(0)
}

async function runSoak(target) {
  const samples = []
  const minutes = 5
  const sampler = setInterval(() => samples.push({ s: samples.length * 10, rssMiB: memoryMiB(target.pid, 'VmRSS') }), 10_000)
  const r = await autocannon({ url: target.url, connections: 1000, duration: minutes * 60, overallRate: RATE })
  clearInterval(sampler)
  const firstMinute = median(samples.filter((x) => x.s >= 10 && x.s < 70).map((x) => x.rssMiB))
  const lastMinute = median(samples.filter((x) => x.s >= (minutes - 1) * 60).map((x) => x.rssMiB))
  console.log(`soak: ${r.requests.total} requests, RSS ${firstMinute?.toFixed(1)} MiB after warm-up -> ${lastMinute?.toFixed(1)} MiB in the last minute`)
  return { minutes, requests: r.requests.total, errors: r.errors + r.timeouts + r.non2xx, rssFirstMinuteMiB: firstMinute, rssLastMinuteMiB: lastMinute, samples }
}

/** sidecar_upstream_connections of the sidecar whose admin port is `admin`, summed over its backends. */
async function upstreamConnections(admin) {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text()
  return [...text.matchAll(/^sidecar_upstream_connections\{[^}]*\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0)
}

/** A route table as an app with many endpoints has one: prefixes, exact paths, regexes, methods
 *  and headers, with per-route policy; "/" (what the load generators ask for) matches only the
 *  last route, so every request is tried against all twenty. */
function twentyRoutes() {
  const routes = []
  for (let i = 0; i < 19; i++) {
    const match = [
      { pathPrefix: `/api/v${i}/` },
      { path: `/exact/${i}` },
      { pathRegex: `^/items/[0-9]+/part-${i}$` },
      { pathPrefix: '/admin/', methods: ['POST', 'DELETE'], headers: { 'x-tenant': { regex: `^t${i}-` } } },
    ][i % 4]
    routes.push({ name: `route-${i}`, match, ...(i % 3 === 0 && { timeoutMs: 30_000 }), ...(i % 5 === 0 && { retry: { attempts: 1 } }), ...(i % 7 === 0 && { limits: { maxBodyBytes: 1 << 20 } }) })
  }
  routes.push({ name: 'everything-else', match: { pathPrefix: '/' }, retry: { attempts: 2 } })
  return routes
}

function nginxConfig(plain, tls, upstreamPort, certs) {
  // nginx 1.22 (Debian 12) spells HTTP/2 on the listen line
  return `worker_processes 1;
daemon off;
pid nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000; # HTTP/1.1 and HTTP/2 alike: no connection closed under the load generators
  upstream app { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${plain};
    listen 127.0.0.1:${tls} ssl http2;
    ssl_certificate ${certs.certFile};
    ssl_certificate_key ${certs.keyFile};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`
}

await main()
