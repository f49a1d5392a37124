// `npm run demo`: the sidecar in front of a stable and a canary version of examples/app.mjs, all
// on this machine, with the committed development certificates, a 90/10 split, retries and a
// circuit breaker. Plain Node, no dependencies beyond the built dist/.
//
//   DEMO_PORT         the sidecar's TLS port (default 8443)
//   DEMO_ADMIN_PORT   its admin port (default 9901)
//   DEMO_STABLE_PORT  the stable app (default 18080)
//   DEMO_CANARY_PORT  the canary app (default 18081)
//   DEMO_DIR          where the config and the logs go (default demo/ in the repository); one
//                     demo at a time per directory, a second demo beside a running one needs
//                     its own DEMO_DIR as well as its own ports
//   DEMO_DRAIN_MS     how long the sidecar still serves after Ctrl-C, its drain.delayMs (default
//                     1000; in-flight requests are cut 4 s after that)
//
// Top to bottom: claim DEMO_DIR by writing DEMO_DIR/demo.pid (refused while the demo whose pid
// it holds is still running: its sidecar reloads DEMO_DIR/sidecar.yaml whenever it changes); check
// that the four loopback ports are free (all of them, naming every busy one); start the two apps
// and wait until they answer; write DEMO_DIR/sidecar.yaml; start dist/main.js with it, its JSON logs going to
// DEMO_DIR/sidecar.log, and wait for /ready; print what to try. Ctrl-C or SIGTERM drains the
// sidecar (DEMO_DRAIN_MS), then stops the apps, and exits 0; a second Ctrl-C kills all three at
// once (exit 1). If one of them dies on its own, the demo says which, stops the others and
// exits 1. demo.pid is removed when the demo exits; one left by a demo that was killed (kill -9)
// names a dead pid and is replaced.
import { spawn } from 'node:child_process'
import { closeSync, existsSync, linkSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const bin = path.join(root, 'dist', 'main.js')
const ports = {
  sidecar: port('DEMO_PORT', 8443),
  admin: port('DEMO_ADMIN_PORT', 9901),
  stable: port('DEMO_STABLE_PORT', 18080),
  canary: port('DEMO_CANARY_PORT', 18081),
}
const dir = path.resolve(process.env.DEMO_DIR || path.join(root, 'demo'))
const pidFile = path.join(dir, 'demo.pid')
const files = {
  config: path.join(dir, 'sidecar.yaml'),
  sidecarLog: path.join(dir, 'sidecar.log'),
  stableLog: path.join(dir, 'stable.log'),
  canaryLog: path.join(dir, 'canary.log'),
}
const DRAIN_MS = integer('DEMO_DRAIN_MS', 1000, 0, 600_000, 'a drain delay in milliseconds')
const DRAIN_TIMEOUT_MS = DRAIN_MS + 4_000 // the sidecar's drain.timeoutMs: in-flight requests cut
const STOP_TIMEOUT_MS = DRAIN_TIMEOUT_MS + 5_000 // a child still there this long after SIGTERM is killed
/** Each port's variable and what it is for, in the order the demo reports them. */
const PORTS = {
  sidecar: ['DEMO_PORT', "the sidecar's TLS port"],
  admin: ['DEMO_ADMIN_PORT', "the sidecar's admin port"],
  stable: ['DEMO_STABLE_PORT', 'the stable app'],
  canary: ['DEMO_CANARY_PORT', 'the canary app'],
}

/** Every child started, in start order: { name, child, log }. */
const children = []
let stopping = false
let firstSignalAt = 0
/** Whether DEMO_DIR/demo.pid is this demo's, to be removed when it exits. */
let claimed = false

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => onSignal(signal))
// The safety net: whatever happens to this process, its children do not outlive it.
process.on('exit', () => {
  children.forEach(({ child }) => running(child) && child.kill('SIGKILL'))
  release()
})

main().catch((err) => stop(1, err instanceof DemoError ? err.message : err.stack))

async function main() {
  const began = Date.now()
  if (!existsSync(bin)) throw new DemoError(`${shown(bin)} is missing: run \`npm run demo\`, which builds it first (or \`npm run build\`).`)
  mkdirSync(dir, { recursive: true })
  const holder = claim()
  const busy = await busyPorts()
  if (holder !== undefined) throw new DemoError(await heldMessage(holder, busy))
  if (busy.length > 0) throw new DemoError(await busyMessage(busy))

  const app = path.join(root, 'examples', 'app.mjs')
  const stable = start('stable app', [app], { APP_NAME: 'stable', APP_ADDRESS: `127.0.0.1:${ports.stable}` }, files.stableLog)
  const canary = start('canary app', [app], { APP_NAME: 'canary', APP_ADDRESS: `127.0.0.1:${ports.canary}` }, files.canaryLog)
  console.log(`Starting the stable app (pid ${stable.child.pid}) on 127.0.0.1:${ports.stable} and the canary app (pid ${canary.child.pid}) on 127.0.0.1:${ports.canary}...`)
  await Promise.all([answers(stable, `http://127.0.0.1:${ports.stable}/healthz`), answers(canary, `http://127.0.0.1:${ports.canary}/healthz`)])
  if (stopping) return

  writeFileSync(files.config, config())
  const sidecar = start('sidecar', [bin, '--config', files.config], {}, files.sidecarLog)
  console.log(`Starting the sidecar (pid ${sidecar.child.pid}) with ${shown(files.config)}; its logs go to ${shown(files.sidecarLog)}...`)
  await answers(sidecar, `http://127.0.0.1:${ports.admin}/ready`)
  if (stopping) return

  console.log(instructions(((Date.now() - began) / 1000).toFixed(1)))
}

/** The sidecar's config: weights to edit live, retries and a breaker tuned to show in seconds. */
function config() {
  const healthCheck = '{ path: /healthz, intervalMs: 1000, timeoutMs: 500 }'
  return `# Written by examples/demo.mjs at each start. The sidecar reloads this file when it changes:
# edit the weights, save, and watch the split move ("config reloaded" in sidecar.log).
listener:
  address: 127.0.0.1:${ports.sidecar}
  tls:                          # the committed development certificates (certs/README.md)
    certFile: ${JSON.stringify(path.join(root, 'certs', 'tls.crt'))}
    keyFile: ${JSON.stringify(path.join(root, 'certs', 'tls.key'))}
admin:
  address: 127.0.0.1:${ports.admin}
backends:
  - name: stable
    url: http://127.0.0.1:${ports.stable}
    weight: 90
    healthCheck: ${healthCheck}
  - name: canary
    url: http://127.0.0.1:${ports.canary}
    weight: 10
    gatesReadiness: false       # a failing canary costs its share of traffic, never readiness
    healthCheck: ${healthCheck}
routing:
  header: x-canary              # "x-canary: always" -> canary, "never" -> stable
retry:
  attempts: 2                   # one retry, which may land on the other backend
  perTryTimeoutMs: 1000         # a slow try is given up after 1 s and retried
  retryOn: [connect-failure, refused, reset, gateway-error, retriable-status-codes]
  statusCodes: [500]            # the demo app fails with 500
circuitBreaker:
  volumeThreshold: 5            # opens after 5 tries in the window, more than half failed
  errorThresholdPercentage: 50
  rollingWindowMs: 10000
  resetTimeoutMs: 10000         # stays open 10 s, then lets one probe through
drain:
  ${`delayMs: ${DRAIN_MS}`.padEnd(28)}# Ctrl-C: not ready at once, still serving for ${DRAIN_MS / 1000} s
  timeoutMs: ${DRAIN_TIMEOUT_MS}
`
}

function instructions(seconds) {
  const url = `https://localhost:${ports.sidecar}`
  const admin = `http://127.0.0.1:${ports.admin}`
  const curl = `curl --cacert ${shown(path.join(root, 'certs', 'ca.crt'))}`
  const config = shown(files.config)
  const control = (port, query) => `curl -X POST 'http://127.0.0.1:${port}/control?${query}'`
  const column = (rows) => rows.map(([left, right]) => `  ${left.padEnd(Math.max(...rows.map((r) => r[0].length)))}   ${right}`).join('\n')
  return `
sidecar-proxy demo: ready in ${seconds} s

${column([
  [`${url}/`, 'the sidecar: TLS, HTTP/2 and HTTP/1.1; 90% stable, 10% canary'],
  [`${admin}/`, `status page; also /status and /metrics`],
  [config, `the config, reloaded when you save it; logs in ${shown(dir)}/`],
])}

Try, from another terminal in this directory:

  1. A request through TLS (HTTP/2), then over HTTP/1.1 with the response headers:
       ${curl} ${url}/hello
       ${curl} --http1.1 -i ${url}/hello
  2. The split over 50 requests, then the canary forced by header:
       for i in $(seq 50); do ${curl} -s ${url}/; done | sort | uniq -c
       ${curl} -H 'x-canary: always' ${url}/hello
  3. Move the split: change the weights in ${config} (90 and 10, to 50 and 50 say), save,
     and run the loop from 2 again.
  4. Make the canary fail, then send it 30 requests by header: each gets 500 (after two tries)
     until most of its tries of the last 10 s failed (steps 2 and 3 left successes in that
     window); then its breaker opens and they get 503 at once:
       ${control(ports.canary, 'failRate=1')}
       for i in $(seq 30); do ${curl} -s -o /dev/null -w '%{http_code} ' -H 'x-canary: always' ${url}/; done; echo
     While it is open (10 s), the loop from 2 lands on stable only; the counters say why:
       for i in $(seq 50); do ${curl} -s ${url}/; done | sort | uniq -c
       curl -s ${admin}/metrics | grep -E '^sidecar_(retries_total|circuit_state)'
     Heal it with ?failRate=0; make it slow with ?delayMs=1500 (each try gives up after 1 s).
  5. A WebSocket through the sidecar (wss://; the client is the ws package of the checkout):
       ${wsTry(url.replace('https:', 'wss:'))}

Ctrl-C stops everything.`
}

/** A one-line WebSocket client: sends "hello" and prints the echo. */
function wsTry(url) {
  const ca = shown(path.join(root, 'certs', 'ca.crt'))
  return `node -e "const ws = new (require('ws'))('${url}/ws', { ca: require('fs').readFileSync('${ca}') }); ws.on('open', () => ws.send('hello')); ws.on('message', (m) => { console.log(String(m)); ws.close() })"`
}

/** Starts `node ARGS` in its own process group (a Ctrl-C in the terminal reaches only the demo,
 *  which then stops the children in order), its output written to `log`. */
function start(name, args, env, log) {
  const fd = openSync(log, 'w')
  const child = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', fd, fd], detached: true })
  closeSync(fd)
  const entry = { name, child, log }
  children.push(entry)
  child.on('exit', (code, signal) => {
    if (stopping) return
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`
    stop(1, `The ${name} (pid ${child.pid}) ${how} unexpectedly. The end of ${shown(log)}:\n${tail(log)}`)
  })
  return entry
}

/** Resolves once `url` answers 200; gives up (stopping everything) after 15 s. */
async function answers({ name, child, log }, url) {
  const deadline = Date.now() + 15_000
  while (!stopping && running(child)) {
    if ((await status(url)) === 200) return
    if (Date.now() > deadline) throw new DemoError(`The ${name} did not answer 200 at ${url} within 15 s. The end of ${shown(log)}:\n${tail(log)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

function status(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(0))
  })
}

function onSignal(signal) {
  if (!stopping) {
    firstSignalAt = Date.now()
    return stop(0, `\n${signal}: the sidecar drains (${DRAIN_MS / 1000} s), then the apps stop. Ctrl-C again to kill them now.`)
  }
  // `npm run` passes the terminal's Ctrl-C on to its script, and when the script shell execs
  // node (bash does) the demo has it from the terminal too: one key press, two signals, ms apart.
  if (Date.now() - firstSignalAt < 500) return
  const left = children.filter(({ child }) => running(child))
  console.log(`${signal} again: killing ${left.map(({ name }) => `the ${name}`).join(', ') || 'nothing'}.`)
  const gone = left.map(({ child }) => new Promise((resolve) => child.once('exit', resolve)))
  left.forEach(({ child }) => child.kill('SIGKILL'))
  void Promise.all(gone).then(() => process.exit(1))
}

/** Stops the sidecar first (it drains), then the apps; then exits with `code`. */
async function stop(code, message) {
  if (stopping) return
  stopping = true
  ;(code === 0 ? console.log : console.error)(message)
  const sidecar = children.filter((c) => c.name === 'sidecar' && running(c.child))
  const apps = children.filter((c) => c.name !== 'sidecar' && running(c.child))
  const clean = [...(await Promise.all(sidecar.map(terminate))), ...(await Promise.all(apps.map(terminate)))].every(Boolean)
  const names = [...sidecar, ...apps].map((c) => `the ${c.name}`)
  if (names.length > 0) console.log(`Stopped ${[names.slice(0, -1).join(', '), names.at(-1)].filter(Boolean).join(' and ')}.${code === 0 && clean ? ' Bye.' : ''}`)
  process.exit(clean ? code : 1)
}

/** SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT_MS; true if it stopped cleanly. */
async function terminate({ name, child }) {
  if (!running(child)) return true
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  const timer = setTimeout(() => {
    console.error(`The ${name} (pid ${child.pid}) did not stop within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM: killing it.`)
    child.kill('SIGKILL')
  }, STOP_TIMEOUT_MS)
  const code = await exited
  clearTimeout(timer)
  return code === 0
}

function running(child) {
  return child.exitCode === null && child.signalCode === null
}

/**
 * Claims DEMO_DIR for this demo: creates DEMO_DIR/demo.pid holding this pid, atomically (written
 * aside, then hard-linked into place, so that nobody reads it half-written). Returns the pid of
 * the running demo that holds it already, or undefined once it is this demo's; a file naming a
 * pid that is gone (a demo killed with kill -9) is replaced.
 */
function claim() {
  const aside = `${pidFile}.${process.pid}`
  writeFileSync(aside, `${process.pid}\n`)
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        linkSync(aside, pidFile)
        claimed = true
        return undefined
      } catch (err) {
        if (err.code !== 'EEXIST') throw err
      }
      let holder
      try {
        holder = Number(readFileSync(pidFile, 'utf8').trim())
      } catch (err) {
        if (err.code === 'ENOENT') continue // its demo just exited
        throw err
      }
      if (alive(holder)) return holder
      rmSync(pidFile, { force: true }) // stale
    }
    throw new DemoError(`Could not claim ${shown(dir)}: ${shown(pidFile)} keeps coming back. Is another demo starting there?`)
  } finally {
    rmSync(aside, { force: true })
  }
}

/** Removes demo.pid if it is still this demo's. */
function release() {
  if (!claimed) return
  claimed = false
  try {
    if (Number(readFileSync(pidFile, 'utf8').trim()) === process.pid) rmSync(pidFile, { force: true })
  } catch {
    // already gone
  }
}

/** Whether `pid` is a running process other than this one. */
function alive(pid) {
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM' // running, as another user
  }
}

/** Every port that cannot be listened on: [{ name, value, code }], in PORTS order. */
async function busyPorts() {
  const busy = []
  for (const [name, value] of Object.entries(ports)) {
    const code = await tryListen(value)
    if (code) busy.push({ name, value, code })
  }
  return busy
}

/** Listens on 127.0.0.1:`value` and closes again; undefined if that worked, else the error code. */
async function tryListen(value) {
  const server = net.createServer()
  const code = await new Promise((resolve) => server.once('error', (err) => resolve(err.code ?? String(err))).listen(value, '127.0.0.1', () => resolve(undefined)))
  if (code === undefined) await new Promise((resolve) => server.close(resolve))
  return code
}

/** The ports to move: `VAR=free port` for each busy one, a port not in use by this demo either. */
async function moves(busy) {
  const taken = new Set(Object.values(ports))
  const moved = {}
  for (const { name, value } of busy) {
    const candidates = [10_000, 20_000, -10_000, -20_000, 30_000, -30_000].map((d) => value + d).filter((p) => p >= 1024 && p <= 65535 && !taken.has(p))
    let pick = candidates[0] ?? value
    for (const p of candidates) {
      if ((await tryListen(p)) === undefined) {
        pick = p
        break
      }
    }
    taken.add(pick)
    moved[PORTS[name][0]] = pick
  }
  return moved
}

/** `npm run demo` with the variables this run was given, changed by `changes`: a line to paste. */
function command(changes) {
  const vars = { DEMO_DIR: process.env.DEMO_DIR || undefined }
  for (const [env] of Object.values(PORTS)) vars[env] = process.env[env] || undefined
  Object.assign(vars, changes)
  const quote = (v) => (/^[\w@%+=:,./-]+$/.test(v) ? v : `'${v.replaceAll("'", `'\\''`)}'`)
  return [...Object.entries(vars).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${quote(String(v))}`), 'npm run demo'].join(' ')
}

/** A directory for a second demo: DEMO_DIR/2, DEMO_DIR/3, ... (demo/2 by default: inside demo/,
 *  which git ignores), the first not held by a running demo. */
function spareDir() {
  for (let n = 2; ; n++) {
    const candidate = path.join(dir, String(n))
    let holder
    try {
      holder = Number(readFileSync(path.join(candidate, 'demo.pid'), 'utf8').trim())
    } catch {
      // no demo.pid: free
    }
    if (!alive(holder)) return shown(candidate)
  }
}

/** One line: which demo holds DEMO_DIR, and the command for a second demo (every busy port moved). */
async function heldMessage(holder, busy) {
  const free = busy.length > 0 ? ' and free ports' : ''
  return (
    `Another demo (pid ${holder}) is running in ${shown(dir)}${path.sep} (${shown(pidFile)}), and its sidecar would reload this one's config: ` +
    `stop it (Ctrl-C in its terminal, or kill ${holder}), or give this one its own directory${free}: ${command({ DEMO_DIR: spareDir(), ...(await moves(busy)) })}`
  )
}

/** One line per busy port, then one command that moves them all. */
async function busyMessage(busy) {
  const lines = busy.map(({ name, value, code }) => {
    const why = code === 'EADDRINUSE' ? 'is in use.' : `cannot be used (${code}).`
    return `Port 127.0.0.1:${value} (${PORTS[name][1]}) ${why}`
  })
  const inUse = busy.some(({ code }) => code === 'EADDRINUSE') ? 'Is the demo still running in another terminal? Stop it, or pick' : 'Pick'
  const what = busy.length > 1 ? 'other ports' : 'another port'
  const dirs = `each demo needs its own ports and its own DEMO_DIR; none runs in ${shown(dir)}${path.sep}`
  lines.push(`${inUse} ${what} (${dirs}): ${command(await moves(busy))}`)
  return lines.join('\n')
}

function port(env, fallback) {
  return integer(env, fallback, 1, 65535, 'a port')
}

/** process.env[env], a whole number from `min` to `max` (`fallback` when unset); exits 2 if not. */
function integer(env, fallback, min, max, what) {
  const text = process.env[env]
  if (!text) return fallback
  const value = Number(text)
  if (Number.isInteger(value) && value >= min && value <= max) return value
  console.error(`${env}=${text} is not ${what}: give a number from ${min} to ${max}, or unset it for ${fallback}.`)
  process.exit(2)
}

/** The last lines of a log, to show why a child failed. */
function tail(log) {
  const lines = readFileSync(log, 'utf8').trimEnd().split('\n').slice(-8)
  return lines.map((l) => `  ${l}`).join('\n')
}

/** A path relative to the working directory when it is inside it, absolute otherwise. */
function shown(file) {
  const rel = path.relative(process.cwd(), file)
  return rel === '' ? '.' : rel.startsWith('..') || path.isAbsolute(rel) ? file : rel
}

class DemoError extends Error {}
