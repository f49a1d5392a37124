// The soak: `npm run soak` (10 minutes), `node bench/soak.mjs --seconds 12 --out FILE` (CI).
//
// Sustained mixed load with client aborts through the BUILT proxy (dist/main.js, its own process,
// production settings: no --expose-gc, access log on, written to a file), then a verdict on what
// a long run must show:
//   rss, heap           the proxy's RSS and V8 heap used are flat after warm-up: the median of the
//                       first third of the post-warm-up samples against the median of the last
//                       third, within max(--rss-growth-pct %, --rss-growth-mib MiB) (heap alike).
//                       Runs shorter than --judge-min-seconds after warm-up only report these.
//   upstream-bound      the upstream never has more open connections than the pool bound (and the
//                       health checks' own one)
//                       (backends[0].maxConnections; the health checker probes through the same
//                       undici Pool, src/upstream/client.ts `probe`, so it adds none). Counted
//                       by the upstream; a count above the bound leaves out sockets the proxy
//                       has already closed (CLOSE_WAIT; see startUpstream: the upstream can be
//                       late to see a close).
//   settle-proxy        once the load stops and the client closes its sockets, the proxy's
//                       sidecar_open_connections returns to 0 ...
//   settle-upstream     ... and the upstream has no request in flight ...
//   upstream-idle       ... and after the pool's idle timeout at most one upstream connection is
//                       left (the health checker's): no socket leaked in the pool.
//   no-5xx              no 5xx but the 504s provoked on purpose (a per-try timeout), as seen by
//                       the client and as counted by the proxy (sidecar_requests_total).
//   unexpected          every request of every kind ended as its kind should (bodies checked).
//   alive, exit         the proxy still answers /live at the end, and exits 0 on SIGTERM.
//
// One process plays the upstream (node:http on loopback, counting its open TCP connections and
// requests in flight) and the clients (node:http, a keep-alive Agent of --connections sockets,
// one closed loop per socket). Request kinds, picked at random (seeded) by weight:
//   get            GET /fast: a small answer at once
//   get-delay      GET /delay?ms=1..10
//   get-stream     GET /stream: 256 KiB in 16 KiB chunks, 5 ms apart
//   post           POST /upload, 1..64 KiB (kept for a retry by the proxy); the echoed length is checked
//   post-large     POST /upload, 256 KiB (streamed through, above retry.maxReplayBytes)
//   abort-upload   POST /upload declaring 256 KiB; 32 KiB sent, then the client destroys its socket
//   abort-download GET /stream; the client destroys its socket after the first chunk
//   abort-headers  GET /delay?ms=50; headers sent, then the socket destroyed 3 ms later
//   timeout        POST /hang, no body: the upstream holds it past retry.perTryTimeoutMs (1 s), the
//                  proxy answers 504 upstream_timeout (a POST: one try, no retry)
// The proxy's /metrics (admin port) is sampled every second: process_resident_memory_bytes,
// nodejs_heap_size_used_bytes, sidecar_open_connections, process_open_fds, CPU; plus the
// upstream's open connections (and the highest count since the previous sample) and in-flight
// requests, and the outcomes so far. Results: a summary on stdout, JSON in
// bench/results/soak-<timestamp>.json (or --out). Exit 0 when every verdict passes, 1 otherwise.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { IMAGE_ENV, freePort, median, waitReady } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string', default: '600' },
    connections: { type: 'string', default: '64' },
    pool: { type: 'string', default: '64' }, // backends[0].maxConnections
    'warmup-share': { type: 'string', default: '0.2' }, // of the run, at least 5 s
    'rss-growth-pct': { type: 'string', default: '10' },
    'rss-growth-mib': { type: 'string', default: '20' },
    'heap-growth-pct': { type: 'string', default: '10' },
    'heap-growth-mib': { type: 'string', default: '10' },
    'judge-min-seconds': { type: 'string', default: '60' }, // post-warm-up time needed to judge memory
    'settle-seconds': { type: 'string', default: '10' },
    seed: { type: 'string', default: '9' },
    mix: { type: 'string' }, // e.g. get=1,post=1: other weights (kinds left out are not made)
    out: { type: 'string' },
    'keep-log': { type: 'boolean', default: false },
  },
})
const SECONDS = Number(flags.seconds)
const CONNECTIONS = Number(flags.connections)
const POOL = Number(flags.pool)
const WARMUP_S = Math.max(5, SECONDS * Number(flags['warmup-share']))
const SETTLE_S = Number(flags['settle-seconds'])
const PER_TRY_TIMEOUT_MS = 1_000 // room for a 256 KiB upload on a busy machine; /hang outlasts it
const HANG_MS = 2_500 // how long /hang holds a request (the proxy gives up at PER_TRY_TIMEOUT_MS)
const IDLE_TIMEOUT_MS = 4_000 // backends[0].idleTimeoutMs (the default, written out)
const CLIENT_TIMEOUT_MS = 10_000 // a request of ours that takes longer counts as an error
const STREAM_BYTES = 256 * 1024
const STREAM_CHUNK = 16 * 1024
const MiB = 1024 * 1024
if (!(SECONDS > 0 && CONNECTIONS > 0 && POOL > 0)) throw new Error('--seconds, --connections and --pool must be positive numbers')

const KINDS = {
  get: 40,
  'get-delay': 15,
  'get-stream': 8,
  post: 15,
  'post-large': 4,
  'abort-upload': 5,
  'abort-download': 5,
  'abort-headers': 5,
  timeout: 3,
}
if (flags.mix) {
  const mix = Object.fromEntries(flags.mix.split(',').map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)]))
  for (const k of Object.keys(mix)) if (!(k in KINDS) || !(mix[k] >= 0)) throw new Error(`--mix: unknown kind or bad weight: ${k}`)
  for (const k of Object.keys(KINDS)) KINDS[k] = mix[k] ?? 0
}
const ABORTS = new Set(['abort-upload', 'abort-download', 'abort-headers'])

const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-soak-'))
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s]`, ...a)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const t0 = Date.now()
let proxy // the proxy's child process, set by startProxy as soon as it is spawned: killed on exit
process.on('exit', () => proxy?.exitCode === null && proxy.signalCode === null && proxy.kill('SIGKILL'))
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(128 + os.constants.signals[signal]))

// ---- helpers (the soak's own; those it shares with bench/run.mjs are in bench/lib.mjs) ----

/** Least-squares slope of y over x. */
function slope(points) {
  const n = points.length
  if (n < 2) return null
  const mx = points.reduce((a, p) => a + p[0], 0) / n
  const my = points.reduce((a, p) => a + p[1], 0) / n
  const sxx = points.reduce((a, p) => a + (p[0] - mx) ** 2, 0)
  return sxx === 0 ? null : points.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / sxx
}

/** mulberry32: a seeded generator, so that a run's mix can be repeated. */
function random(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Prometheus text -> Map of `name{labels}` -> number. */
function parseMetrics(text) {
  const m = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    m.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return m
}

/** The peer ports of the upstream's sockets in CLOSE_WAIT (Linux, /proc/net/tcp): the proxy has
 *  closed them, the upstream has not read that yet. null where /proc is not there. */
function closeWaitPeers(port) {
  try {
    const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`
    const peers = new Set()
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const [, local, remote, state] = line.trim().split(/\s+/)
      if (local?.endsWith(hex) && state === '08') peers.add(parseInt(remote.split(':')[1], 16))
    }
    return peers
  } catch {
    return null
  }
}

// ---- the upstream ----

const up = { open: 0, maxOpen: 0, maxOpenCounted: 0, maxOpenAtAccept: 0, overBound: [], maxOpenSinceSample: 0, accepted: 0, inFlight: 0, maxInFlight: 0, requests: 0 }

function startUpstream() {
  const server = http.createServer((req, res) => {
    up.requests++
    up.inFlight++
    up.maxInFlight = Math.max(up.maxInFlight, up.inFlight)
    res.once('close', () => up.inFlight--) // answered, or the connection went away
    const url = new URL(req.url, 'http://x')
    const json = (status, body) => {
      const text = JSON.stringify(body)
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
    }
    switch (url.pathname) {
      case '/delay':
      case '/hang': {
        req.resume()
        const ms = url.pathname === '/hang' ? HANG_MS : Number(url.searchParams.get('ms') ?? 5)
        const timer = setTimeout(() => json(200, { waited: ms }), ms)
        res.once('close', () => clearTimeout(timer))
        return
      }
      case '/stream': {
        req.resume()
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': STREAM_BYTES })
        let sent = 0
        let timer
        const next = () => {
          if (res.destroyed) return
          res.write(STREAM_BODY.subarray(sent, sent + STREAM_CHUNK))
          sent += STREAM_CHUNK
          if (sent >= STREAM_BYTES) res.end()
          else timer = setTimeout(next, 5)
        }
        res.once('close', () => clearTimeout(timer))
        next()
        return
      }
      case '/upload': {
        let bytes = 0
        req.on('data', (c) => (bytes += c.length))
        req.on('end', () => json(200, { bytes }))
        req.on('error', () => {}) // the client (through the proxy) went away mid-body
        return
      }
      default: // /fast and the health check's /
        req.resume()
        json(200, { ok: true })
    }
  })
  // A connection is open from 'connection' until the proxy ends it (FIN: 'end', RST: 'error') or
  // it closes. Counted this way the upstream lags: when the proxy closes a pooled socket and
  // opens another at once, the new one may be accepted before the old one's FIN is read (libuv
  // accepts every pending connection in one go; Node's http server stops reading a socket while
  // its response is backed up). So the count is taken one event-loop turn after an accept, and a
  // count still above the bound then leaves out the counted sockets the kernel shows in
  // CLOSE_WAIT (the proxy has sent its FIN: it cannot send a request on them again). A row the
  // read misses is left in, so the correction can only err towards a higher count. The raw
  // counts are kept (upstreamOpenMaxCounted, upstreamOpenMaxAtAccept) with every correction.
  const live = new Map() // socket -> its peer port (the proxy's end)
  let checkQueued = false
  const check = () => {
    checkQueued = false
    let open = up.open
    up.maxOpenCounted = Math.max(up.maxOpenCounted, open)
    if (open > POOL + 1) {
      const peers = closeWaitPeers(server.address().port)
      const closed = peers === null ? null : [...live.values()].filter((p) => peers.has(p)).length
      if (up.overBound.length < 100) up.overBound.push({ atS: (Date.now() - t0) / 1000, counted: open, closedByProxy: closed })
      if (closed !== null) open -= closed
    }
    up.maxOpen = Math.max(up.maxOpen, open)
    up.maxOpenSinceSample = Math.max(up.maxOpenSinceSample, open)
  }
  server.on('connection', (socket) => {
    up.accepted++
    up.open++
    live.set(socket, socket.remotePort)
    up.maxOpenAtAccept = Math.max(up.maxOpenAtAccept, up.open)
    if (!checkQueued) setImmediate(() => setImmediate(check)) // after the next poll phase
    checkQueued = true
    const gone = () => {
      if (live.delete(socket)) up.open--
    }
    socket.once('end', gone).once('error', gone).once('close', gone)
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}
const STREAM_BODY = Buffer.alloc(STREAM_BYTES, 's')
const UPLOAD_BODY = Buffer.alloc(STREAM_BYTES, 'u')

// ---- the proxy ----

async function startProxy(upstreamPort) {
  const [port, admin] = [await freePort(), await freePort()]
  const configFile = join(tmp, 'soak.json')
  const config = {
    backends: [{ name: 'app', maxConnections: POOL, idleTimeoutMs: IDLE_TIMEOUT_MS }],
    retry: { perTryTimeoutMs: PER_TRY_TIMEOUT_MS },
    drain: { delayMs: 200, timeoutMs: 5_000 },
  }
  writeFileSync(configFile, JSON.stringify(config, null, 2))
  const logFile = join(tmp, 'proxy.log')
  const out = openSync(logFile, 'a')
  const args = [join(root, 'dist/main.js'), '--config', configFile, '--plaintext', '--listen', `127.0.0.1:${port}`, '--admin', `127.0.0.1:${admin}`, '--upstream', `http://127.0.0.1:${upstreamPort}`]
  const child = (proxy = spawn(process.execPath, args, { stdio: ['ignore', out, out], env: { ...process.env, ...IMAGE_ENV } }))
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  await Promise.race([waitReady(admin), child.exited.then(({ code, signal }) => Promise.reject(new Error(`the proxy exited (${code ?? signal}) at start; its log: ${logFile}`)))])
  return { port, admin, config, logFile }
}

// ---- the clients ----

const outcomes = Object.fromEntries(Object.keys(KINDS).map((k) => [k, { made: 0, '2xx': 0, '4xx': 0, '5xx': 0, aborted: 0, errors: 0, unexpected: 0 }]))
const unexpectedExamples = []

/** One request of `kind`; resolves when it is over, however it ended. Never rejects. */
function once(kind, port, agent, rnd) {
  const o = outcomes[kind]
  o.made++
  return new Promise((resolve) => {
    let settled = false
    /** how: '2xx'.. | 'aborted' | 'errors'; expected: whether that is what this kind should do */
    const done = (how, expected, detail) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      o[how]++
      if (!expected) {
        o.unexpected++
        if (unexpectedExamples.length < 20) unexpectedExamples.push({ kind, how, detail, atS: (Date.now() - t0) / 1000 })
      }
      resolve()
    }
    let method = 'GET'
    let path = '/fast'
    let body
    let declared
    if (kind === 'get-delay') path = `/delay?ms=${1 + Math.floor(rnd() * 10)}`
    else if (kind === 'get-stream' || kind === 'abort-download') path = '/stream'
    else if (kind === 'abort-headers') path = '/delay?ms=50'
    else if (kind === 'timeout') {
      method = 'POST'
      path = '/hang'
      declared = 0
    }
    else if (kind === 'post' || kind === 'post-large' || kind === 'abort-upload') {
      method = 'POST'
      path = '/upload'
      const size = kind === 'post' ? 1024 + Math.floor(rnd() * 63 * 1024) : STREAM_BYTES
      body = UPLOAD_BODY.subarray(0, size)
      declared = size
    }
    const headers = declared === undefined ? {} : { 'content-type': 'application/octet-stream', 'content-length': String(declared) }
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent })
    const timer = setTimeout(() => {
      req.destroy()
      done('errors', false, `no end within ${CLIENT_TIMEOUT_MS} ms`)
    }, CLIENT_TIMEOUT_MS)
    const abort = () => {
      req.destroy()
      done('aborted', true)
    }
    req.on('error', (err) => done(ABORTS.has(kind) ? 'aborted' : 'errors', ABORTS.has(kind), err.code ?? err.message))
    req.on('response', (res) => {
      const cls = `${Math.floor(res.statusCode / 100)}xx`
      const how = cls === '2xx' || cls === '4xx' || cls === '5xx' ? cls : 'errors'
      if (kind === 'abort-download') {
        res.once('data', abort)
        res.on('error', () => {})
        return
      }
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('error', (err) => done('errors', ABORTS.has(kind), `response body: ${err.code ?? err.message}`))
      res.on('end', () => {
        const got = Buffer.concat(chunks)
        if (kind === 'timeout') return done(how, res.statusCode === 504 && res.headers['x-sidecar-error'] === 'upstream_timeout', `${res.statusCode} ${res.headers['x-sidecar-error'] ?? ''}`)
        if (ABORTS.has(kind)) return done(how, false, `answered ${res.statusCode} before the abort`)
        let ok = res.statusCode === 200
        if (ok && kind === 'get-stream') ok = got.length === STREAM_BYTES
        if (ok && body !== undefined) ok = JSON.parse(got.toString()).bytes === declared
        done(how, ok, `${res.statusCode} ${res.headers['x-sidecar-error'] ?? ''} ${got.length} bytes`)
      })
    })
    if (kind === 'abort-upload') {
      req.write(body.subarray(0, 32 * 1024))
      setTimeout(abort, 5 + Math.floor(rnd() * 15))
    } else if (kind === 'abort-headers') {
      req.flushHeaders()
      setTimeout(abort, 3)
    } else {
      req.end(body)
    }
  })
}

/** One closed loop: a request at a time until the deadline (or a count far above any rate). */
async function worker(i, port, agent, until) {
  const rnd = random(Number(flags.seed) * 1000 + i)
  const total = Object.values(KINDS).reduce((a, b) => a + b, 0)
  const maxRequests = SECONDS * 100_000
  for (let n = 0; n < maxRequests && Date.now() < until; n++) {
    let r = rnd() * total
    const kind = Object.keys(KINDS).find((k) => (r -= KINDS[k]) < 0) ?? 'get'
    await once(kind, port, agent, rnd)
  }
}

// ---- sampling ----

const samples = []

async function sample(admin, phase) {
  const text = await fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.text(), () => null)
  const m = text === null ? new Map() : parseMetrics(text)
  const num = (k) => (m.has(k) ? m.get(k) : null)
  const mib = (bytes) => (bytes === null ? null : bytes / MiB)
  const done = Object.values(outcomes).reduce((a, o) => a + o['2xx'] + o['4xx'] + o['5xx'] + o.aborted + o.errors, 0)
  const s = {
    t: Math.round((Date.now() - t0) / 100) / 10,
    phase,
    rssMiB: mib(num('process_resident_memory_bytes')),
    heapUsedMiB: mib(num('nodejs_heap_size_used_bytes')),
    heapTotalMiB: mib(num('nodejs_heap_size_total_bytes')),
    proxyOpenConnections: num('sidecar_open_connections'),
    proxyOpenFds: num('process_open_fds'),
    proxyCpuSeconds: num('process_cpu_seconds_total'),
    upstreamOpen: up.open,
    upstreamOpenMax: up.maxOpenSinceSample,
    upstreamInFlight: up.inFlight,
    completed: done,
    metricsOk: text !== null,
  }
  up.maxOpenSinceSample = up.open
  samples.push(s)
  return { s, m }
}

// ---- the run ----

async function main() {
  if (!existsSync(join(root, 'dist/main.js'))) throw new Error('no dist/main.js: run `tsc -p .` first (npm run soak does)')
  const upstream = await startUpstream()
  const upstreamPort = upstream.address().port
  const p = await startProxy(upstreamPort)
  log(`proxy pid ${proxy.pid} on 127.0.0.1:${p.port} (admin ${p.admin}), upstream 127.0.0.1:${upstreamPort}, pool ${POOL}`)
  log(`${SECONDS} s of load from ${CONNECTIONS} connections, warm-up ${WARMUP_S} s; then up to ${SETTLE_S} s to settle`)

  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS })
  const loadStart = Date.now()
  const warmupEnd = loadStart + WARMUP_S * 1000
  const until = loadStart + SECONDS * 1000
  const workers = Promise.all(Array.from({ length: CONNECTIONS }, (_, i) => worker(i, p.port, agent, until)))

  // one sample a second while the load runs (each waits for the previous: no pile-up)
  let loading = true
  void workers.then(() => (loading = false))
  const postWarmup = []
  for (let tick = 1; loading && tick <= SECONDS + 60; tick++) {
    await sleep(Math.max(0, loadStart + tick * 1000 - Date.now()))
    const { s } = await sample(p.admin, Date.now() < warmupEnd ? 'warmup' : 'load')
    if (s.phase === 'load') postWarmup.push(s)
    if (tick % (SECONDS >= 120 ? 30 : 5) === 0) {
      log(`${s.completed} requests, RSS ${s.rssMiB?.toFixed(1)} MiB, heap ${s.heapUsedMiB?.toFixed(1)} MiB, proxy conns ${s.proxyOpenConnections}, upstream conns ${s.upstreamOpen} (max ${up.maxOpen}), in flight ${s.upstreamInFlight}`)
    }
  }
  await workers
  const loadSeconds = (Date.now() - loadStart) / 1000
  const totalDone = Object.values(outcomes).reduce((a, o) => a + o.made, 0)
  log(`load over: ${totalDone} requests in ${loadSeconds.toFixed(1)} s (${Math.round(totalDone / loadSeconds)} req/s)`)

  // settle: our sockets closed, the proxy must see every one gone and the upstream finish
  agent.destroy()
  const settleStart = Date.now()
  let settled = null
  for (let i = 0; i < SETTLE_S * 4; i++) {
    await sleep(250)
    const { s } = await sample(p.admin, 'settle')
    if (s.proxyOpenConnections === 0 && s.upstreamInFlight === 0) {
      settled = s
      break
    }
  }
  const last = samples.at(-1)
  const settleMs = Date.now() - settleStart
  log(`settle: proxy open connections ${last.proxyOpenConnections}, upstream in flight ${last.upstreamInFlight} after ${settleMs} ms`)

  // the pool's idle sockets close after idleTimeoutMs; the health checker's one may stay
  let idleLeft = up.open
  for (let i = 0; i < ((IDLE_TIMEOUT_MS + 3000) / 250) && idleLeft > 1; i++) {
    await sleep(250)
    idleLeft = up.open
  }
  const { m: finalMetrics } = await sample(p.admin, 'idle')
  log(`upstream open connections after the pool's idle timeout: ${idleLeft}`)

  const alive = proxy.exitCode === null && (await fetch(`http://127.0.0.1:${p.admin}/live`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.ok, () => false))
  const peakRssMiB = (() => {
    try {
      const line = readFileSync(`/proc/${proxy.pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmHWM:'))
      return Number(line.split(/\s+/)[1]) / 1024
    } catch {
      return null
    }
  })()

  // stop: SIGTERM, a clean drain, exit 0
  const stopStart = Date.now()
  proxy.kill('SIGTERM')
  const exit = await Promise.race([proxy.exited, sleep(15_000).then(() => ({ code: null, signal: 'timeout' }))])
  if (exit.signal === 'timeout') proxy.kill('SIGKILL')
  log(`proxy stopped: ${exit.code ?? exit.signal} after ${Date.now() - stopStart} ms`)
  const closed = new Promise((resolve) => upstream.close(resolve))
  upstream.closeAllConnections() // close() resolves only once every connection has ended
  await closed

  // the proxy's own counts: answers by status code, attempts by result
  const byLabel = (name, label) => {
    const out = {}
    for (const [k, v] of finalMetrics) {
      if (!k.startsWith(`${name}{`)) continue
      const value = new RegExp(`${label}="([^"]*)"`).exec(k)?.[1] ?? '?'
      out[value] = (out[value] ?? 0) + v
    }
    return out
  }
  const proxyCodes = byLabel('sidecar_requests_total', 'code')
  const proxyAttempts = byLabel('sidecar_upstream_attempts_total', 'result')
  const proxyRejections = byLabel('sidecar_rejected_requests_total', 'reason')
  const proxy5xx = Object.entries(proxyCodes).reduce((a, [c, n]) => a + (c.startsWith('5') ? n : 0), 0)
  const provoked504 = outcomes.timeout['5xx']
  const client5xxOther = Object.entries(outcomes).reduce((a, [k, o]) => a + (k === 'timeout' ? 0 : o['5xx']), 0)

  // the proxy's log: anything above info
  let logLines = { warnOrWorse: 0, examples: [] }
  try {
    const text = execFileSync('grep', ['-v', '"level":"info"', p.logFile], { maxBuffer: 64 * MiB }).toString().trim()
    const lines = text === '' ? [] : text.split('\n')
    logLines = { warnOrWorse: lines.length, examples: lines.slice(0, 10) }
  } catch (err) {
    if (err.status !== 1) logLines = { warnOrWorse: null, examples: [`grep failed: ${err.message}`] } // 1: no line matched
  }

  // ---- verdicts ----
  const firstThird = postWarmup.slice(0, Math.max(1, Math.floor(postWarmup.length / 3)))
  const lastThird = postWarmup.slice(postWarmup.length - Math.max(1, Math.floor(postWarmup.length / 3)))
  const judgeMemory = postWarmup.length >= Number(flags['judge-min-seconds'])
  const growth = (key, pct, mib) => {
    const start = median(firstThird.map((s) => s[key]))
    const end = median(lastThird.map((s) => s[key]))
    const grew = start === null || end === null ? null : end - start
    const allowed = start === null ? null : Math.max((start * pct) / 100, mib)
    const perMinute = slope(postWarmup.filter((s) => s[key] !== null).map((s) => [s.t / 60, s[key]]))
    return { warmupEndMiB: start, endMiB: end, growthMiB: grew, growthPct: start ? (grew / start) * 100 : null, allowedMiB: allowed, slopeMiBPerMinute: perMinute, maxMiB: Math.max(...postWarmup.map((s) => s[key] ?? 0)) }
  }
  const rss = growth('rssMiB', Number(flags['rss-growth-pct']), Number(flags['rss-growth-mib']))
  const heap = growth('heapUsedMiB', Number(flags['heap-growth-pct']), Number(flags['heap-growth-mib']))
  const unexpected = Object.values(outcomes).reduce((a, o) => a + o.unexpected, 0)
  const verdicts = []
  const judge = (name, figure, pass) => verdicts.push({ name, figure, pass })
  const memVerdict = (g) => (!judgeMemory ? null : g.growthMiB !== null && g.growthMiB <= g.allowedMiB)
  judge('rss', `RSS ${f(rss.warmupEndMiB)} -> ${f(rss.endMiB)} MiB after warm-up: ${sign(rss.growthMiB)} MiB (${sign(rss.growthPct)} %), allowed ${f(rss.allowedMiB)} MiB`, memVerdict(rss))
  judge('heap', `heap used ${f(heap.warmupEndMiB)} -> ${f(heap.endMiB)} MiB after warm-up: ${sign(heap.growthMiB)} MiB (${sign(heap.growthPct)} %), allowed ${f(heap.allowedMiB)} MiB`, memVerdict(heap))
  judge('upstream-bound', `upstream open connections max ${up.maxOpen} (pool bound ${POOL} and the health checks' 1; counted by the upstream ${up.maxOpenCounted}, ${up.maxOpenAtAccept} at accept, ${up.overBound.length} count(s) over it corrected for sockets in CLOSE_WAIT; ${up.accepted} accepted in all)`, up.maxOpen <= POOL + 1)
  judge('settle-proxy', `proxy open connections after the load: ${last.proxyOpenConnections} (${settleMs} ms after the client closed its sockets)`, settled !== null && last.proxyOpenConnections === 0)
  judge('settle-upstream', `upstream requests in flight after the load: ${last.upstreamInFlight}`, settled !== null && last.upstreamInFlight === 0)
  judge('upstream-idle', `upstream open connections after the pool's idle timeout (${IDLE_TIMEOUT_MS} ms): ${idleLeft}`, idleLeft <= 1)
  judge('no-5xx', `5xx other than the provoked 504s: ${client5xxOther} seen by the client; the proxy answered ${proxy5xx} 5xx for ${provoked504} provoked`, client5xxOther === 0 && proxy5xx === provoked504)
  judge('unexpected', `requests that did not end as their kind should: ${unexpected}`, unexpected === 0)
  const weighted = Object.entries(outcomes).filter(([k]) => KINDS[k] > 0)
  judge('kinds', `every kind with a weight was made: ${weighted.map(([k, o]) => `${k} ${o.made}`).join(', ')}`, weighted.every(([, o]) => o.made > 0))
  judge('alive', `proxy alive at the end (/live): ${alive}`, alive)
  judge('exit', `proxy exit on SIGTERM: ${exit.code ?? exit.signal}`, exit.code === 0)
  const pass = verdicts.every((v) => v.pass !== false)

  const cpuSeconds = finalMetrics.get('process_cpu_seconds_total') ?? null
  const results = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, kernel: os.release() },
    plan: {
      seconds: SECONDS,
      connections: CONNECTIONS,
      warmupSeconds: WARMUP_S,
      kinds: KINDS,
      seed: Number(flags.seed),
      thresholds: { rssGrowthPct: Number(flags['rss-growth-pct']), rssGrowthMiB: Number(flags['rss-growth-mib']), heapGrowthPct: Number(flags['heap-growth-pct']), heapGrowthMiB: Number(flags['heap-growth-mib']), judgeMinSeconds: Number(flags['judge-min-seconds']) },
      proxyConfig: p.config,
    },
    pass,
    verdicts,
    figures: {
      loadSeconds,
      requests: totalDone,
      requestsPerSecond: totalDone / loadSeconds,
      memoryJudged: judgeMemory,
      rss,
      heap,
      peakRssMiB,
      proxyCpuUsPerRequest: cpuSeconds === null ? null : (cpuSeconds / totalDone) * 1e6,
      poolBound: POOL,
      upstreamOpenMax: up.maxOpen,
      upstreamOpenMaxCounted: up.maxOpenCounted,
      upstreamOpenMaxAtAccept: up.maxOpenAtAccept,
      upstreamOverBoundChecks: up.overBound,
      upstreamAccepted: up.accepted,
      upstreamInFlightMax: up.maxInFlight,
      upstreamRequests: up.requests,
      proxyOpenConnectionsMax: Math.max(...samples.map((s) => s.proxyOpenConnections ?? 0)),
      afterSettle: { proxyOpenConnections: last.proxyOpenConnections, upstreamInFlight: last.upstreamInFlight, settleMs, settled: settled !== null },
      upstreamOpenAfterIdle: idleLeft,
      alive,
      proxyExit: exit,
      provoked504,
      client5xxOther,
      proxy5xx,
    },
    outcomes,
    unexpectedExamples,
    proxyCodes,
    proxyAttempts,
    proxyRejections,
    proxyLog: logLines,
    samples,
  }

  const stamp = results.date.slice(0, 16).replace(/[-:]/g, '').replace('T', '-')
  const out = flags.out ?? join(root, `bench/results/soak-${stamp}.json`)
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify(results, null, 2) + '\n')

  console.log('\nrequests by kind:')
  console.log(`  ${'kind'.padEnd(15)} ${['made', '2xx', '4xx', '5xx', 'aborted', 'errors', 'unexpected'].map((h) => h.padStart(11)).join('')}`)
  for (const [k, o] of Object.entries(outcomes)) console.log(`  ${k.padEnd(15)} ${[o.made, o['2xx'], o['4xx'], o['5xx'], o.aborted, o.errors, o.unexpected].map((n) => String(n).padStart(11)).join('')}`)
  console.log(`  ${Math.round(totalDone / loadSeconds)} req/s; proxy CPU ${f(results.figures.proxyCpuUsPerRequest, 0)} us/request; peak RSS ${f(peakRssMiB)} MiB`)
  console.log(`  the proxy's answers by code: ${JSON.stringify(proxyCodes)}; attempts by result: ${JSON.stringify(proxyAttempts)}; rejections: ${JSON.stringify(proxyRejections)}`)
  console.log(`  proxy log lines above info: ${logLines.warnOrWorse}`)
  for (const e of unexpectedExamples.slice(0, 5)) console.log(`  unexpected: ${JSON.stringify(e)}`)
  console.log('\nverdicts:')
  for (const v of verdicts) console.log(`  ${v.pass === null ? 'n/a ' : v.pass ? 'PASS' : 'FAIL'}  ${v.name.padEnd(16)} ${v.figure}${v.pass === null ? ` (not judged: ${postWarmup.length} s after warm-up < ${flags['judge-min-seconds']} s)` : ''}`)
  console.log(`\n${pass ? 'PASS' : 'FAIL'}; written: ${out}`)
  if (pass && !flags['keep-log']) rmSync(tmp, { recursive: true, force: true })
  else console.log(`proxy log: ${p.logFile}`)
  process.exit(pass ? 0 : 1)
}

function f(x, digits = 1) {
  return x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits)
}
function sign(x) {
  return x === null || !Number.isFinite(x) ? '-' : `${x >= 0 ? '+' : ''}${x.toFixed(1)}`
}

await main().catch((err) => {
  console.error(`soak failed to run: ${err.stack ?? err}`)
  process.exit(1)
})
