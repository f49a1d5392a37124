// `npm run demo` as a newcomer meets it: start examples/demo.mjs (with the dist/ that `npm test`
// builds first) on free ports, wait for its "ready", then do what its printed instructions say,
// over real TLS with the committed CA; then Ctrl-C, and every process it started is gone.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import http2 from 'node:http2'
import https from 'node:https'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { metric, request, type Reply } from './fixtures/client.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

interface Demo {
  child: ChildProcess
  output: () => string
  exited: Promise<number | null>
}

function runDemo(env: Record<string, string>): Demo {
  const child = spawn(process.execPath, ['examples/demo.mjs'], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()))
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, output: () => output, exited }
}

/** Ports that were free a moment ago (all held at once, so they differ). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<net.Server>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => resolve(server))
    })),
  )
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port)
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  return ports
}

async function demoEnv(t: Test): Promise<Record<string, string>> {
  const [sidecar, admin, stable, canary] = await freePorts(4)
  return {
    DEMO_PORT: String(sidecar),
    DEMO_ADMIN_PORT: String(admin),
    DEMO_STABLE_PORT: String(stable),
    DEMO_CANARY_PORT: String(canary),
    DEMO_DIR: t.testdir(),
  }
}

async function waitFor(demo: Demo, pattern: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const match = demo.output().match(pattern)
    if (match) return match
    if (Date.now() > deadline) throw new Error(`no ${pattern} in the demo's output within ${timeoutMs} ms:\n${demo.output()}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The one value a printed line gives for `pattern`'s group. */
function printed(text: string, pattern: RegExp): string {
  const match = text.match(pattern)
  if (!match) throw new Error(`the instructions do not show ${pattern}:\n${text}`)
  return match[1]!
}

const PID = { stable: /the stable app \(pid (\d+)\)/, canary: /the canary app \(pid (\d+)\)/, sidecar: /the sidecar \(pid (\d+)\)/ }

/** The PIDs the demo says it started, checked against the processes themselves. */
function pids(text: string): { stable: number; canary: number; sidecar: number } {
  return { stable: Number(printed(text, PID.stable)), canary: Number(printed(text, PID.canary)), sidecar: Number(printed(text, PID.sidecar)) }
}

/** How long a demo may take to stop on SIGTERM before it and its children are killed. */
const STOP_MS = 10_000

/**
 * Stops a demo that may still run the way Ctrl-C does: SIGTERM, then wait. SIGKILL alone would
 * leave its children running (they are detached, and its exit handler does not run on SIGKILL),
 * so a demo that has not exited within STOP_MS is killed along with every child its output names.
 * Whatever happened in the test, nothing it started outlives it.
 */
async function stopped(demo: Demo): Promise<void> {
  demo.child.kill('SIGTERM')
  const timer = setTimeout(() => demo.child.kill('SIGKILL'), STOP_MS)
  await demo.exited
  clearTimeout(timer)
  for (const pattern of Object.values(PID)) {
    const pid = Number(demo.output().match(pattern)?.[1])
    if (pid > 0 && alive(pid)) process.kill(pid, 'SIGKILL')
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false
    throw err
  }
}

async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function http2Get(url: string, ca: Buffer): Promise<{ status: number; body: string; protocol: string }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url, { ca })
    session.on('error', reject)
    const stream = session.request({ ':path': new URL(url).pathname })
    let body = ''
    let status = 0
    stream.on('response', (headers) => (status = Number(headers[':status'])))
    stream.on('data', (c: Buffer) => (body += c.toString()))
    stream.on('end', () => {
      const protocol = session.alpnProtocol ?? ''
      session.close()
      resolve({ status, body, protocol })
    })
    stream.on('error', reject)
  })
}

const appOf = (reply: Reply) => (JSON.parse(reply.body.toString()) as { app: string }).app

t.test('the demo: ready, what it prints works, Ctrl-C stops every process it started', async (t) => {
  const env = await demoEnv(t)
  const demo = runDemo(env)
  t.teardown(() => stopped(demo))
  const began = Date.now()
  await waitFor(demo, /Ctrl-C stops everything\./)
  const text = demo.output()
  t.match(text, /sidecar-proxy demo: ready in \d+\.\d s/)
  t.comment(`ready after ${Date.now() - began} ms`)
  const started = pids(text)
  for (const [name, pid] of Object.entries(started)) t.ok(alive(pid), `the ${name} (pid ${pid}) runs`)

  // What the instructions name, read from them rather than rebuilt here.
  const url = printed(text, /^ {2}(https:\/\/localhost:\d+)\/ +the sidecar/m)
  t.equal(url, `https://localhost:${env.DEMO_PORT}`)
  const admin = printed(text, /^ {2}(http:\/\/127\.0\.0\.1:\d+)\/ +status page/m)
  const ca = readFileSync(path.resolve(ROOT, printed(text, /curl --cacert (\S+) /)))
  const config = path.resolve(ROOT, printed(text, /^ {2}(\S+sidecar\.yaml) +the config/m))
  const failCanary = printed(text, /curl -X POST '(http:\/\/127\.0\.0\.1:\d+\/control\?failRate=1)'/)
  const grep = new RegExp(printed(text, /\/metrics \| grep -E '([^']+)'/), 'm')
  const agent = new https.Agent({ keepAlive: true, ca })
  t.teardown(() => agent.destroy())
  const get = (headers: Record<string, string> = {}) => request(`${url}/`, { agent, headers })

  // 1. through TLS, verified with the printed CA: HTTP/2, then HTTP/1.1
  const h2 = await http2Get(`${url}/hello`, ca)
  t.equal(h2.protocol, 'h2')
  t.equal(h2.status, 200)
  t.match(JSON.parse(h2.body), { app: /^(stable|canary)$/, path: '/hello' })
  const h1 = await request(`${url}/hello`, { tls: { ca } })
  t.equal(h1.status, 200)
  t.match(h1.headers['x-request-id'], /^[0-9a-f-]{36}$/)

  // 2. the split answers from both apps only; the header override picks the canary
  const split = await Promise.all(Array.from({ length: 20 }, () => get()))
  t.same(new Set(split.map((r) => r.status)), new Set([200]))
  t.ok(split.every((r) => ['stable', 'canary'].includes(appOf(r))), 'every answer is from stable or canary')
  t.equal(appOf(await get({ 'x-canary': 'always' })), 'canary')
  t.equal(appOf(await get({ 'x-canary': 'never' })), 'stable')

  // 3. editing the weights in the printed config file moves the split, and back
  const original = readFileSync(config, 'utf8')
  t.match(original, /weight: 90\n[^]*weight: 10\n/)
  writeFileSync(config, original.replace('weight: 90', 'weight: 0').replace('weight: 10', 'weight: 100'))
  await until('all traffic on the canary after the edit', async () => (await Promise.all([get(), get(), get(), get(), get()])).every((r) => appOf(r) === 'canary'))
  writeFileSync(config, original)
  await until('stable back after the edit is undone', async () => appOf(await get()) === 'stable')

  // 4. a failing canary: retries counted, then its breaker opens and the forced requests get 503
  const control = await request(failCanary, { method: 'POST' })
  t.equal(control.status, 200)
  t.match(JSON.parse(control.body.toString()), { app: 'canary', failRate: 1 })
  const retries = `sidecar_retries_total{backend="canary",reason="retriable-status-codes"}`
  await until('a retry of a failed canary try counted', async () => {
    await Promise.all(Array.from({ length: 20 }, () => get()))
    return (await metric(admin, retries)) > 0
  })
  // Forced onto the failing canary: its 500 (after two tries) until its breaker opens, then 503.
  // How many 500s come first depends on what the breaker's 10 s window still holds (the successes
  // of step 3, the failures of the loop above): none if the breaker has opened already.
  const forced: Reply[] = []
  while (forced.length < 50 && forced.at(-1)?.status !== 503) forced.push(await get({ 'x-canary': 'always' }))
  const opened = forced.pop()!
  t.equal(opened.status, 503, `503 once the breaker is open, after ${forced.length} answers 500`)
  t.equal(opened.headers['x-sidecar-error'], 'circuit_open')
  const failed = { status: 500, body: { app: 'canary', error: 'failing on purpose: failRate set by POST /control' } }
  t.same(forced.map((r) => ({ status: r.status, body: JSON.parse(r.body.toString()) as unknown })), forced.map(() => failed), 'every answer before it: the canary\'s 500, saying why')
  const counters = (await request(`${admin}/metrics`)).body.toString()
  t.match(counters, grep, 'the printed grep finds the counters')
  t.match(counters, /^sidecar_circuit_state\{backend="canary"\} 2$/m)
  t.equal((await request(`${admin}/ready`)).status, 200, 'a failing canary does not cost readiness')
  agent.destroy()

  // 5. the printed WebSocket client, run as printed, from the repository as the user would
  const wsCommand = printed(text, /^ {7}(node -e "const ws = new \(require\('ws'\)\).*)$/m)
  const echoed = await new Promise<string>((resolve, reject) =>
    execFile('sh', ['-c', wsCommand], { cwd: ROOT, timeout: 10_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
  )
  t.match(JSON.parse(echoed), { app: 'stable', echo: 'hello' }, 'the WebSocket echo, through the sidecar (the broken canary is out of the pick)')

  // Ctrl-C: the sidecar drains, the apps stop, exit 0, nothing left behind
  const sidecarLog = readFileSync(path.join(env.DEMO_DIR!, 'sidecar.log'), 'utf8')
  t.match(sidecarLog, new RegExp(`"pid":${started.sidecar},.*"msg":"sidecar-proxy started"`), 'the printed sidecar pid is the one logging')
  t.match(sidecarLog, /"msg":"config reloaded"/)
  const stopping = Date.now()
  demo.child.kill('SIGINT')
  t.equal(await demo.exited, 0)
  t.comment(`stopped ${Date.now() - stopping} ms after SIGINT`)
  t.match(demo.output(), /Stopped the sidecar, the stable app and the canary app\. Bye\.\n$/)
  for (const [name, pid] of Object.entries(started)) t.notOk(alive(pid), `the ${name} (pid ${pid}) is gone`)
  t.match(readFileSync(path.join(env.DEMO_DIR!, 'sidecar.log'), 'utf8'), /"msg":"sidecar-proxy stopped"/, 'the sidecar drained and stopped')
})

t.test('a child that dies is named, the others are stopped, exit 1', async (t) => {
  const demo = runDemo(await demoEnv(t))
  t.teardown(() => stopped(demo))
  await waitFor(demo, /Ctrl-C stops everything\./)
  const started = pids(demo.output())
  process.kill(started.canary, 'SIGKILL')
  t.equal(await demo.exited, 1)
  t.match(demo.output(), new RegExp(`The canary app \\(pid ${started.canary}\\) was killed by SIGKILL unexpectedly\\. The end of .*canary\\.log:\\n.*"msg":"listening"`))
  t.match(demo.output(), /Stopped the sidecar and the stable app\.\n$/)
  for (const [name, pid] of Object.entries(started)) t.notOk(alive(pid), `the ${name} (pid ${pid}) is gone`)
})

t.test('Ctrl-C: a duplicate a few ms later is the same press, a second one kills at once, exit 1', async (t) => {
  // a 5 s drain: the second press, 1 s after the first, comes seconds before the drain is over
  const demo = runDemo({ ...(await demoEnv(t)), DEMO_DRAIN_MS: '5000' })
  t.teardown(() => stopped(demo))
  await waitFor(demo, /Ctrl-C stops everything\./)
  const started = pids(demo.output())
  const first = Date.now()
  demo.child.kill('SIGINT')
  await new Promise((resolve) => setTimeout(resolve, 5))
  demo.child.kill('SIGINT') // what `npm run` adds when its script shell execs node (bash does)
  const gap = Date.now() - first
  t.ok(gap < 250, `the duplicate ${gap} ms after the first, well inside the demo's 500 ms`)
  await waitFor(demo, /SIGINT: the sidecar drains \(5 s\)/)
  await new Promise((resolve) => setTimeout(resolve, 1_000))
  t.notMatch(demo.output(), /SIGINT again/, 'still draining after the duplicate')
  t.ok(alive(started.sidecar), 'the sidecar is draining')
  demo.child.kill('SIGINT')
  t.equal(await demo.exited, 1)
  t.match(demo.output(), /SIGINT again: killing the stable app, the canary app, the sidecar\.\n/)
  for (const [name, pid] of Object.entries(started)) t.notOk(alive(pid), `the ${name} (pid ${pid}) is gone`)
})

t.test('every busy port is named, with one command that moves them all, before anything starts', async (t) => {
  const env = await demoEnv(t)
  const taken = [env.DEMO_ADMIN_PORT, env.DEMO_CANARY_PORT].map(() => net.createServer())
  await Promise.all(taken.map((s, i) => new Promise<void>((resolve) => s.listen(Number([env.DEMO_ADMIN_PORT, env.DEMO_CANARY_PORT][i]), '127.0.0.1', resolve))))
  t.teardown(() => Promise.all(taken.map((s) => new Promise((resolve) => s.close(resolve)))))
  const demo = runDemo(env)
  t.teardown(() => stopped(demo))
  t.equal(await demo.exited, 1)
  const lines = demo.output().split('\n')
  t.equal(lines[0], `Port 127.0.0.1:${env.DEMO_ADMIN_PORT} (the sidecar's admin port) is in use.`)
  t.equal(lines[1], `Port 127.0.0.1:${env.DEMO_CANARY_PORT} (the canary app) is in use.`)
  t.match(lines[2], /^Is the demo still running in another terminal\? Stop it, or pick other ports \(each demo needs its own ports and its own DEMO_DIR; none runs in .*\): /)
  t.equal(lines.length, 4, 'three lines, then nothing')
  // the command keeps what this run was given and moves both busy ports, to ports that are free
  const moved = (name: string) => Number(printed(lines[2]!, new RegExp(` ${name}=(\\d+) `)))
  t.match(lines[2], new RegExp(`: DEMO_DIR=${env.DEMO_DIR} DEMO_PORT=${env.DEMO_PORT} DEMO_ADMIN_PORT=\\d+ DEMO_STABLE_PORT=${env.DEMO_STABLE_PORT} DEMO_CANARY_PORT=\\d+ npm run demo$`))
  t.not(moved('DEMO_ADMIN_PORT'), Number(env.DEMO_ADMIN_PORT))
  t.not(moved('DEMO_CANARY_PORT'), Number(env.DEMO_CANARY_PORT))
  t.notMatch(demo.output(), /Starting/, 'nothing was started')
  t.notOk(existsSync(path.join(env.DEMO_DIR!, 'demo.pid')), 'demo.pid is removed again')
  t.notOk(existsSync(path.join(env.DEMO_DIR!, 'sidecar.yaml')), 'no config written')
})

t.test('one demo per DEMO_DIR: a second one is refused while the first runs, whatever its ports', async (t) => {
  const env = await demoEnv(t)
  const pidFile = path.join(env.DEMO_DIR!, 'demo.pid')
  // what a demo killed with kill -9 leaves: a demo.pid naming a process that is gone
  const dead = spawn(process.execPath, ['-e', ''])
  await new Promise((resolve) => dead.on('exit', resolve))
  writeFileSync(pidFile, `${dead.pid}\n`)

  const first = runDemo(env)
  t.teardown(() => stopped(first))
  await waitFor(first, /Ctrl-C stops everything\./)
  t.equal(readFileSync(pidFile, 'utf8'), `${first.child.pid}\n`, 'the stale demo.pid was replaced by the running demo\'s')
  const config = readFileSync(path.join(env.DEMO_DIR!, 'sidecar.yaml'), 'utf8')
  const admin = `http://127.0.0.1:${env.DEMO_ADMIN_PORT}`

  // the same directory on other ports (what the old busy-port hint led to)
  const [port, adminPort, stablePort, canaryPort] = (await freePorts(4)).map(String) as [string, string, string, string]
  const moved = { DEMO_PORT: port, DEMO_ADMIN_PORT: adminPort, DEMO_STABLE_PORT: stablePort, DEMO_CANARY_PORT: canaryPort }
  const second = runDemo({ ...moved, DEMO_DIR: env.DEMO_DIR! })
  t.teardown(() => stopped(second))
  t.equal(await second.exited, 1)
  const spare = path.relative(ROOT, path.join(env.DEMO_DIR!, '2')) // beside the first, inside its DEMO_DIR
  const held = `Another demo \\(pid ${first.child.pid}\\) is running in ${path.relative(ROOT, env.DEMO_DIR!)}/ \\(${path.relative(ROOT, pidFile)}\\), and its sidecar would reload this one's config: stop it \\(Ctrl-C in its terminal, or kill ${first.child.pid}\\), or give this one its own directory`
  t.match(second.output(), new RegExp(`^${held}: DEMO_DIR=${spare} DEMO_PORT=${moved.DEMO_PORT} DEMO_ADMIN_PORT=${moved.DEMO_ADMIN_PORT} DEMO_STABLE_PORT=${moved.DEMO_STABLE_PORT} DEMO_CANARY_PORT=${moved.DEMO_CANARY_PORT} npm run demo\\n$`), 'one line: who holds the directory, what to do')
  // the same directory and the same ports: one line still, and the command moves every port too
  const again = runDemo(env)
  t.teardown(() => stopped(again))
  t.equal(await again.exited, 1)
  t.match(again.output(), new RegExp(`^${held} and free ports: DEMO_DIR=${spare} DEMO_PORT=\\d+ DEMO_ADMIN_PORT=\\d+ DEMO_STABLE_PORT=\\d+ DEMO_CANARY_PORT=\\d+ npm run demo\\n$`))
  t.notMatch(again.output(), new RegExp(`DEMO_(ADMIN_|STABLE_|CANARY_)?PORT=(${[env.DEMO_PORT, env.DEMO_ADMIN_PORT, env.DEMO_STABLE_PORT, env.DEMO_CANARY_PORT].join('|')}) `), 'every port moved')

  // the first demo is untouched: its config, its log, its pid file, its backends
  t.equal(readFileSync(path.join(env.DEMO_DIR!, 'sidecar.yaml'), 'utf8'), config, 'the config was not rewritten')
  t.match(readFileSync(path.join(env.DEMO_DIR!, 'sidecar.log'), 'utf8'), /"msg":"sidecar-proxy started"/, 'the sidecar log was not truncated')
  t.equal(readFileSync(pidFile, 'utf8'), `${first.child.pid}\n`, 'demo.pid still names the first demo')
  const status = JSON.parse((await request(`${admin}/status`)).body.toString()) as { backends: Array<{ url: string }> }
  t.same(status.backends.map((b) => b.url), [`http://127.0.0.1:${env.DEMO_STABLE_PORT}`, `http://127.0.0.1:${env.DEMO_CANARY_PORT}`], 'its backends did not move')

  first.child.kill('SIGINT')
  t.equal(await first.exited, 0)
  t.notOk(existsSync(pidFile), 'a clean exit removes demo.pid')
})
