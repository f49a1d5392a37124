// The path users run: TLS, HTTP/2 and HTTP/1.1 keep-alive, new and resumed handshakes. The CPU
// time each proxy process spends per request (per connection for the handshake rows), at a fixed
// rate, side by side in one run and interleaved round by round:
//   sidecar      sidecar-proxy over TLS with HTTP/2, defaults, access log written to a file
//   floor        Node's floor over TLS (bench/servers/tls-floor.mjs): http2.createSecureServer
//                with allowHTTP1 and the compat API, undici Pool.dispatch, nothing else
//   caddy, nginx, haproxy   when installed, each on one thread (GOMAXPROCS=1, one worker,
//                nbthread 1)
// All use the committed RSA-2048 dev certificate and forward to one app: nginx answering a small
// body with `return 200` when nginx is installed (it costs the shared cores least), else
// bench/servers/upstream.mjs. Each proxy is pinned to the second core (taskset) when it can be.
//
// Rows:
//   h2       h2load, 10 connections x 10 streams, RATE req/s in all (--rps per connection)
//   h1       h2load --h1, 50 keep-alive connections, RATE req/s in all
//   new      a new TLS connection (full handshake) per request, HANDSHAKES per second
//   resumed  the same, each resuming its previous session (TLS 1.3 ticket)
// and once per proxy, the memory of IDLE idle TLS connections (one request made on each).
//
// Run by bench/run.mjs, or alone: `node bench/tls.mjs [--quick] [--rounds N]`.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import tls from 'node:tls'
import { parseArgs } from 'node:util'
import { IMAGE_ENV, cpuSeconds, freePort, listening, median, memoryMiB, nginxWorker, waitReady, which } from './lib.mjs'
import { renderTls } from './report.mjs'

const root = new URL('..', import.meta.url).pathname
const RATE = 3000
const HANDSHAKES = 200
const IDLE = 1000
const CERT = join(root, 'certs/tls.crt')
const KEY = join(root, 'certs/tls.key')

/** `cmd args`'s standard output. */
const run = (cmd, args) => execFileSync(cmd, args, { maxBuffer: 1 << 20 }).toString()

/** h2load at RATE req/s in all for `seconds`: the requests that succeeded and those that did not. */
function h2loadAt(url, h1, seconds) {
  const shape = h1 ? ['--h1', '-c50', `--rps=${RATE / 50}`] : ['-c10', '-m10', `--rps=${RATE / 10}`]
  const out = run(which('h2load'), [...shape, `-D${seconds}`, url])
  const [, succeeded, failed, errored] = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out) ?? []
  return { done: Number(succeeded), errors: Number(failed) + Number(errored) }
}

/** One request on one new TLS connection (HTTP/1.1, Connection: close); resolves with the
 *  session the server gave, or null on a failure. */
function oneConnection(port, session) {
  return new Promise((resolve) => {
    let ticket = null
    let answer = ''
    let resumed = false
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'], session })
    socket.on('session', (s) => (ticket = s))
    // not ended: a TLS client's half-close is read by some servers as going away
    socket.on('secureConnect', () => {
      resumed = socket.isSessionReused()
      socket.write('GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n')
    })
    socket.on('data', (chunk) => (answer += chunk.toString('latin1')))
    socket.on('end', () => socket.end())
    socket.on('close', () => resolve(answer.startsWith('HTTP/1.1 200') ? { ticket, resumed } : null))
    socket.on('error', () => {})
  })
}

/** HANDSHAKES new TLS connections per second for `seconds`, 16 at a time; with `resume`, each
 *  worker resumes the session it was last given. */
async function handshakes(port, seconds, resume) {
  let done = 0
  let resumed = 0
  let errors = 0
  const started = Date.now()
  const end = started + seconds * 1000
  const WORKERS = 16
  const worker = async (i) => {
    let session
    for (let n = 0; ; n++) {
      const due = started + ((n * WORKERS + i) * 1000) / HANDSHAKES
      if (due >= end) return
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()))
      const r = await oneConnection(port, resume ? session : undefined)
      if (!r) errors++
      else {
        done++
        if (r.resumed) resumed++
        if (r.ticket) session = r.ticket
      }
    }
  }
  await Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(i)))
  return { done, resumed, errors }
}

/** IDLE TLS connections, each after one keep-alive request; the RSS they add to `pid`, KiB each. */
async function idleMemory(port, pid) {
  const before = memoryMiB(pid, 'VmRSS')
  const sockets = []
  for (let i = 0; i < IDLE; i++) {
    sockets.push(
      await new Promise((resolve) => {
        const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
        socket.on('secureConnect', () => socket.write('GET / HTTP/1.1\r\nhost: localhost\r\n\r\n'))
        socket.once('data', () => resolve(socket))
        socket.on('error', () => resolve(socket))
      }),
    )
  }
  await new Promise((r) => setTimeout(r, 2000))
  const after = memoryMiB(pid, 'VmRSS')
  for (const s of sockets) s.destroy()
  return ((after - before) * 1024) / IDLE
}

export async function measureTls({ quick = false, rounds = quick ? 1 : 3 } = {}) {
  const seconds = quick ? 3 : 8
  const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-bench-tls-'))
  const children = []
  const taskset = which('taskset')
  const start = async (name, command, args, port, env = {}, pinned = true) => {
    const out = openSync(join(tmp, `${name}.log`), 'a')
    const [cmd, argv] = pinned && taskset ? [taskset, ['-c', String(os.cpus().length - 1), command, ...args]] : [command, args]
    const child = spawn(cmd, argv, { stdio: ['ignore', out, out], env: { ...process.env, ...(command === process.execPath && IMAGE_ENV), ...env } })
    child.graceful = command === which('nginx') // its master takes its workers down on SIGTERM; SIGKILL would orphan them
    children.push(child)
    await listening(port)
    return child.pid
  }
  try {
    const nginx = which('nginx')
    const appPort = await freePort()
    if (nginx) {
      const dir = mkdtempSync(join(tmp, 'app-'))
      writeFileSync(join(dir, 'nginx.conf'), `worker_processes 1;\ndaemon off;\npid nginx.pid;\nevents { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:${appPort}; location / { default_type application/json; return 200 '{"ok":true,"service":"bench-upstream"}'; } } }\n`)
      await start('app', nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], appPort, {}, false)
    } else {
      await start('app', process.execPath, [join(root, 'bench/servers/upstream.mjs'), String(appPort)], appPort, {}, false)
    }
    const app = `127.0.0.1:${appPort}`
    const targets = []

    const [port, admin] = [await freePort(), await freePort()]
    const file = join(tmp, 'sidecar.yaml')
    writeFileSync(file, JSON.stringify({ listener: { address: `127.0.0.1:${port}`, tls: { certFile: CERT, keyFile: KEY }, http2: true }, admin: { address: `127.0.0.1:${admin}` }, backends: [{ name: 'app', url: `http://${app}`, weight: 100 }] }))
    targets.push({ name: 'sidecar', port, pid: await start('sidecar', process.execPath, [join(root, 'dist/main.js'), '--config', file], port) })
    await waitReady(admin)
    const floorPort = await freePort()
    targets.push({ name: 'floor', port: floorPort, pid: await start('floor', process.execPath, [join(root, 'bench/servers/tls-floor.mjs'), String(floorPort), `http://${app}`, CERT, KEY], floorPort) })

    const caddy = which('caddy')
    if (caddy) {
      const p = await freePort()
      writeFileSync(join(tmp, 'Caddyfile'), `{\n  admin off\n  auto_https off\n  default_sni localhost\n}\nhttps://localhost:${p}, https://127.0.0.1:${p} {\n  tls ${CERT} ${KEY}\n  reverse_proxy ${app}\n}\n`)
      targets.push({ name: 'caddy', port: p, pid: await start('caddy', caddy, ['run', '--config', join(tmp, 'Caddyfile'), '--adapter', 'caddyfile'], p, { GOMAXPROCS: '1', HOME: tmp }) })
    }
    if (nginx) {
      const p = await freePort()
      const dir = mkdtempSync(join(tmp, 'nginx-'))
      writeFileSync(join(dir, 'nginx.conf'), `worker_processes 1;\ndaemon off;\npid nginx.pid;\nevents { worker_connections 4096; }\nhttp {\n  access_log off;\n  keepalive_requests 1000000;\n  upstream app { server ${app}; keepalive 128; }\n  server {\n    listen 127.0.0.1:${p} ssl http2;\n    ssl_certificate ${CERT};\n    ssl_certificate_key ${KEY};\n    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }\n  }\n}\n`)
      const master = await start('nginx', nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], p)
      targets.push({ name: 'nginx', port: p, pid: nginxWorker(master) })
    }
    const haproxy = which('haproxy')
    if (haproxy) {
      const p = await freePort()
      writeFileSync(join(tmp, 'haproxy.pem'), readFileSync(CERT, 'utf8') + readFileSync(KEY, 'utf8'))
      writeFileSync(join(tmp, 'haproxy.cfg'), `global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend front\n  bind 127.0.0.1:${p} ssl crt ${join(tmp, 'haproxy.pem')} alpn h2,http/1.1\n  default_backend app\nbackend app\n  server app ${app}\n`)
      targets.push({ name: 'haproxy', port: p, pid: await start('haproxy', haproxy, ['-db', '-f', join(tmp, 'haproxy.cfg')], p) })
    }

    const rows = [
      { row: 'h2', go: (t) => h2loadAt(`https://127.0.0.1:${t.port}/`, false, seconds) },
      { row: 'h1', go: (t) => h2loadAt(`https://127.0.0.1:${t.port}/`, true, seconds) },
      { row: 'new', go: (t) => handshakes(t.port, seconds, false) },
      { row: 'resumed', go: (t) => handshakes(t.port, seconds, true) },
    ]
    for (const t of targets) h2loadAt(`https://127.0.0.1:${t.port}/`, false, 1) // warm-up: JIT, pools
    for (const t of targets) t.idleKiB = await idleMemory(t.port, t.pid)
    for (const t of targets) t.runs = Object.fromEntries(rows.map((r) => [r.row, []]))
    for (let round = 1; round <= rounds; round++) {
      for (const t of targets) {
        const line = []
        for (const { row, go } of rows) {
          const before = cpuSeconds(t.pid)
          const r = await go(t)
          const us = ((cpuSeconds(t.pid) - before) / r.done) * 1e6
          t.runs[row].push({ us, errors: r.errors, resumed: r.resumed })
          line.push(`${row} ${us.toFixed(0)} us${r.errors ? ` (${r.errors} errors)` : ''}${row === 'resumed' ? ` (${r.resumed}/${r.done} resumed)` : ''}`)
        }
        console.log(`tls round ${round} ${t.name.padEnd(8)} ${line.join(', ')}`)
      }
    }

    const floor = targets.find((t) => t.name === 'floor')
    const result = {
      rate: RATE,
      handshakesPerSecond: HANDSHAKES,
      seconds,
      rounds,
      app: nginx ? 'nginx return 200' : 'bench/servers/upstream.mjs',
      pinned: Boolean(taskset),
      targets: targets.map((t) => ({
        name: t.name,
        ...Object.fromEntries(rows.map(({ row }) => [row, median(t.runs[row].map((r) => r.us))])),
        errors: rows.reduce((n, { row }) => n + t.runs[row].reduce((m, r) => m + r.errors, 0), 0),
        resumedShare: t.runs.resumed.length ? median(t.runs.resumed.map((r) => r.resumed)) : null,
        idleKiBPerConnection: t.idleKiB,
      })),
    }
    const med = (name, row) => result.targets.find((t) => t.name === name)?.[row]
    result.ratios = Object.fromEntries(['h2', 'h1', 'new', 'resumed'].map((row) => [row, med('sidecar', row) / med(floor.name, row)]))
    result.ratios.idleMemory = result.targets[0].idleKiBPerConnection / result.targets[1].idleKiBPerConnection
    return result
  } finally {
    for (const c of children) c.kill(c.graceful ? 'SIGTERM' : 'SIGKILL')
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { quick: { type: 'boolean' }, rounds: { type: 'string' } } })
  const r = await measureTls({ quick: values.quick, ...(values.rounds && { rounds: Number(values.rounds) }) })
  const date = new Date().toISOString()
  const cpu = os.cpus()
  const text = `Run ${date.slice(0, 16).replace('T', ' ')} UTC on ${cpu.length} x ${cpu[0]?.model}, Node ${process.version}, Linux ${os.release()}.\n\n${renderTls(r)}`
  const name = values.quick ? 'tls-quick' : `tls-${date.slice(0, 16).replace(/[-:]/g, '').replace('T', '-')}`
  writeFileSync(join(root, 'bench/results', `${name}.json`), JSON.stringify({ date, machine: { cpu: cpu[0]?.model, cores: cpu.length, node: process.version, kernel: os.release() }, tls: r }, null, 2) + '\n')
  writeFileSync(join(root, 'bench/results', `${name}.md`), text)
  console.log(`\n${text}\nwritten: bench/results/${name}.{json,md}`)
  process.exit(0)
}
