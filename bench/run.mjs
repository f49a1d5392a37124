// The load-test harness: `npm run bench` (about 15 minutes), `npm run bench -- --quick` (about a
// minute), `npm run bench -- --soak` (adds the 5-minute memory soak).
//
// One fast upstream on loopback, then every target in its own process, measured in the same run
// and interleaved round by round so that drift of the machine hits all of them alike:
//   direct             autocannon -> upstream (the physical limit)
//   sidecar            sidecar-proxy, plain HTTP, default layers, access log written to a file
//   sidecar-tls        sidecar-proxy over TLS, keep-alive connections
//   sidecar-tls-new    sidecar-proxy over TLS, one handshake per request (a client of our own:
//                      autocannon's reconnectRate drops the response it reconnects after), at
//                      a fixed rate of HANDSHAKE_RATE
//   sidecar-full       sidecar-proxy with retries, breaker and a 90/10 canary split
//   bare-undici        node:http + an undici Pool in a few lines: the floor of any Node proxy
//   http-proxy         node http-proxy 1.18.1 with a keep-alive agent
//   nginx, nginx-tls   when nginx is installed (one worker, like Node's one thread)
// and, apart (bench/protocols.mjs), WebSocket messages and gRPC unary calls through the sidecar
// against the same echo servers reached directly.
// For each: requests/s at saturation (64 connections), latency percentiles and errors; then at a
// fixed rate the proxy process's CPU time per request (from /proc/PID/stat: at saturation the
// load generator competes for the same cores) and the p99 it adds over direct; peak RSS. Then
// RSS with 1,000 keep-alive connections open. Medians over the rounds. Results go to
// bench/results/ as JSON, Markdown and SVG.
import { spawn } from 'node:child_process'
import https from 'node:https'
import { mkdtempSync, openSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { cpuSeconds, freePort, median, memoryMiB, nginxWorker, waitReady, which } from './lib.mjs'
import { measureProtocols } from './protocols.mjs'
import { renderMarkdown, renderSvg } from './report.mjs'

const root = new URL('..', import.meta.url).pathname
const { values: flags } = parseArgs({
  options: { quick: { type: 'boolean' }, soak: { type: 'boolean' }, rate: { type: 'string' }, rounds: { type: 'string' } },
})
const PLAN = flags.quick
  ? { rounds: 1, saturateS: 3, fixedS: 3, warmS: 1, manyS: 3 }
  : { rounds: 5, saturateS: 10, fixedS: 10, warmS: 2, manyS: 10 }
if (flags.rounds) PLAN.rounds = Number(flags.rounds)
const RATE = Number(flags.rate ?? 3000)
const CONNECTIONS = 64
const HANDSHAKE_RATE = 200
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-bench-'))
const children = []

// nginx's master takes its workers down on SIGTERM (SIGKILL would orphan them); the rest go at once
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill(c.spawnfile.endsWith('nginx') ? 'SIGTERM' : 'SIGKILL')))
process.on('SIGINT', () => process.exit(130))

async function waitForPort(port) {
  for (let i = 0; i < 200; i++) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s.end() && true)).on('error', () => resolve(false))
    })
    if (up) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nothing listens on ${port}`)
}

/** Starts a process whose output goes to a file; resolves once `port` accepts connections. */
async function start(name, command, args, port, env = {}) {
  const out = openSync(join(tmp, `${name}.log`), 'a')
  const child = spawn(command, args, { stdio: ['ignore', out, out], env: { ...process.env, ...env } })
  children.push(child)
  child.on('exit', (code, signal) => {
    if (!stopping) console.error(`${name} exited (${code ?? signal}); its log: ${join(tmp, `${name}.log`)}`)
  })
  await waitForPort(port)
  return child.pid
}
let stopping = false

const load = (url, opts) => (opts.newConnections ? handshakes(url, opts) : autocannon({ url, connections: CONNECTIONS, ...opts }))

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
  await start('upstream', process.execPath, [join(root, 'bench/servers/upstream.mjs'), String(upstreamPort)], upstreamPort)
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
    return { pid, port }
  }
  const app = { name: 'app', url: upstream, weight: 100 }
  const targets = []
  const add = (name, pid, url, extra = {}) => targets.push({ name, pid, url, ...extra, runs: [] })

  add('direct', undefined, upstream)
  let s = await sidecar('sidecar', { listener: { tls: false }, backends: [app] })
  add('sidecar', s.pid, `http://127.0.0.1:${s.port}/`)
  s = await sidecar('sidecar-tls', { listener: { tls: certs, http2: true }, backends: [app] })
  add('sidecar-tls', s.pid, `https://127.0.0.1:${s.port}/`, { tls: true })
  add('sidecar-tls-new', s.pid, `https://127.0.0.1:${s.port}/`, { tls: true, newConnections: 16, rate: HANDSHAKE_RATE })
  s = await sidecar('sidecar-full', {
    listener: { tls: false },
    backends: [{ ...app, weight: 90 }, { name: 'canary', url: upstream, weight: 10 }],
    retry: { attempts: 3, perTryTimeoutMs: 1000, retryOn: ['connect-failure', 'refused', 'reset', 'gateway-error', 'retriable-status-codes'], statusCodes: [503] },
    circuitBreaker: { volumeThreshold: 20 },
  })
  add('sidecar-full', s.pid, `http://127.0.0.1:${s.port}/`)
  let port = await freePort()
  add('bare-undici', await start('bare-undici', process.execPath, [join(root, 'bench/servers/bare-undici.mjs'), String(port), upstream], port), `http://127.0.0.1:${port}/`)
  port = await freePort()
  add('http-proxy', await start('http-proxy', process.execPath, [join(root, 'bench/servers/http-proxy.mjs'), String(port), upstream], port), `http://127.0.0.1:${port}/`)
  const nginx = which('nginx')
  if (nginx) {
    const [plain, tls] = [await freePort(), await freePort()]
    writeFileSync(join(tmp, 'nginx.conf'), nginxConfig(plain, tls, upstreamPort, certs))
    const pid = await start('nginx', nginx, ['-p', tmp, '-c', join(tmp, 'nginx.conf'), '-e', join(tmp, 'nginx-error.log')], plain)
    add('nginx', pid, `http://127.0.0.1:${plain}/`, { workerOf: pid })
    add('nginx-tls', pid, `https://127.0.0.1:${tls}/`, { tls: true, workerOf: pid })
  }

  console.log(`${targets.length} targets, ${PLAN.rounds} round(s): ${PLAN.saturateS} s at saturation (${CONNECTIONS} connections) and ${PLAN.fixedS} s at ${RATE} req/s each`)
  for (const t of targets) await load(t.url, { duration: PLAN.warmS, newConnections: t.newConnections }) // warm-up: JIT, pools
  for (let round = 1; round <= PLAN.rounds; round++) {
    for (const t of targets) {
      const sat = await load(t.url, { duration: PLAN.saturateS, newConnections: t.newConnections })
      const pid = t.workerOf ? nginxWorker(t.workerOf) : t.pid
      const cpuBefore = pid ? cpuSeconds(pid) : 0
      const rate = t.rate ?? RATE
      const fixed = await load(t.url, { duration: PLAN.fixedS, overallRate: rate, newConnections: t.newConnections })
      const cpu = pid ? cpuSeconds(pid) - cpuBefore : NaN
      t.runs.push({
        rps: sat.requests.average,
        p50: sat.latency.p50,
        p90: sat.latency.p90,
        p99: sat.latency.p99,
        max: sat.latency.max,
        errors: sat.errors + sat.timeouts + sat.non2xx + fixed.errors + fixed.timeouts + fixed.non2xx,
        fixedRps: fixed.requests.average,
        fixedP99: fixed.latency.p99,
        cpuUsPerRequest: (cpu / fixed.requests.total) * 1e6,
      })
      console.log(`round ${round} ${t.name.padEnd(16)} ${Math.round(sat.requests.average).toString().padStart(6)} req/s  p99 ${sat.latency.p99} ms  | at ${rate}/s: ${((cpu / fixed.requests.total) * 1e6).toFixed(0)} us CPU/req, p99 ${fixed.latency.p99} ms`)
    }
  }

  // 1,000 keep-alive connections on the plain sidecar, each sending slowly.
  const plainSidecar = targets.find((t) => t.name === 'sidecar')
  const many = await autocannon({ url: plainSidecar.url, connections: 1000, duration: PLAN.manyS, overallRate: RATE })
  const manyConnections = { connections: 1000, rssMiB: memoryMiB(plainSidecar.pid, 'VmRSS'), errors: many.errors + many.timeouts + many.non2xx }
  console.log(`1,000 connections: sidecar RSS ${manyConnections.rssMiB.toFixed(1)} MiB, ${manyConnections.errors} errors`)

  const soak = flags.soak ? await runSoak(plainSidecar) : undefined

  // WebSocket messages and gRPC unary calls: the sidecar against the same echo servers direct
  const protocols = await measureProtocols({ seconds: flags.quick ? 2 : PLAN.saturateS })

  const direct = targets.find((t) => t.name === 'direct')
  const results = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, kernel: os.release() },
    plan: { ...PLAN, connections: CONNECTIONS, fixedRate: RATE },
    targets: targets.map((t) => {
      const m = (key) => median(t.runs.map((r) => r[key]))
      return {
        name: t.name,
        rps: m('rps'),
        latencyMs: { p50: m('p50'), p90: m('p90'), p99: m('p99'), max: m('max') },
        errors: t.runs.reduce((n, r) => n + r.errors, 0),
        fixedRate: {
          rate: t.rate ?? RATE,
          rps: m('fixedRps'),
          p99Ms: m('fixedP99'),
          addedP99Ms: t === direct ? 0 : t.rate ? null : m('fixedP99') - median(direct.runs.map((r) => r.fixedP99)),
          cpuUsPerRequest: t.pid ? m('cpuUsPerRequest') : null,
        },
        peakRssMiB: t.pid ? memoryMiB(t.workerOf ? nginxWorker(t.workerOf) : t.pid, 'VmHWM') : null,
      }
    }),
    manyConnections,
    soak,
    protocols,
  }
  results.ratios = ratios(results.targets, manyConnections)
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

/** The ratios the targets are stated in (issue "Load-test harness"), each with its verdict. */
function ratios(ts, many) {
  const get = (n) => ts.find((t) => t.name === n)
  const out = []
  const add = (what, value, target, pass) => out.push({ what, value, target, pass })
  const [sc, bare, hp, tls, ngTls, full] = ['sidecar', 'bare-undici', 'http-proxy', 'sidecar-tls', 'nginx-tls', 'sidecar-full'].map(get)
  add('sidecar CPU per request / bare undici (fixed rate)', sc.fixedRate.cpuUsPerRequest / bare.fixedRate.cpuUsPerRequest, '<= 1.2', sc.fixedRate.cpuUsPerRequest / bare.fixedRate.cpuUsPerRequest <= 1.2)
  add('sidecar throughput / node http-proxy (saturation)', sc.rps / hp.rps, '>= 1.8', sc.rps / hp.rps >= 1.8)
  add('bare undici throughput / node http-proxy (reference)', bare.rps / hp.rps, 'reference', null)
  add('sidecar added p99 over direct at the fixed rate (ms)', sc.fixedRate.addedP99Ms, '<= 1', sc.fixedRate.addedP99Ms <= 1)
  add('sidecar-full CPU per request / sidecar', full.fixedRate.cpuUsPerRequest / sc.fixedRate.cpuUsPerRequest, 'reference', null)
  if (ngTls) add('sidecar TLS keep-alive throughput / nginx TLS', tls.rps / ngTls.rps, '>= 0.35', tls.rps / ngTls.rps >= 0.35)
  else add('sidecar TLS keep-alive throughput / nginx TLS', null, '>= 0.35', null)
  add('sidecar RSS with 1,000 connections (MiB)', many.rssMiB, '< 100', many.rssMiB < 100)
  return out
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

function nginxConfig(plain, tls, upstreamPort, certs) {
  return `worker_processes 1;
daemon off;
pid nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${plain};
    listen 127.0.0.1:${tls} ssl;
    ssl_certificate ${certs.certFile};
    ssl_certificate_key ${certs.keyFile};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`
}

await main()
