// The front door under attack: `npm run attack` (about 8 minutes; `-- --seconds N` per attack,
// `-- --only slow-body,rapid-reset` for some). Each attack runs with real tools against the built
// sidecar (TLS, HTTP/2, default limits) and, when installed, nginx beside it (one worker, the
// same certificate and app), each target started fresh for each attack, the attack processes at
// nice 10. Meanwhile an honest client (curl over TLS from its own loopback address, 127.0.0.9)
// asks every 250 ms; the figure is the share of its requests answered 200 within 1 s. Also:
// the target's peak RSS and CPU, sockets left in CLOSE-WAIT after the attack, the sidecar's
// breaker, whether the target serves in the 2 s after, and the memory an idle TLS connection
// costs. slowhttptest and h2load (nghttp2-client) are installed with apt when missing and root.
// `-- --heap MiB` runs the sidecar with that V8 heap ceiling (--max-old-space-size), as Node sizes
// it in a container with a memory limit; without it, V8 on a large machine collects lazily and
// the peak RSS is mostly garbage.
// Results go to bench/results/attack-*.{json,md}.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { IMAGE_ENV, cpuSeconds, freePort, memoryMiB, nginxWorker, waitReady, which } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values: flags } = parseArgs({ options: { seconds: { type: 'string' }, only: { type: 'string' }, heap: { type: 'string' } } })
const SECONDS = Number(flags.seconds ?? 20)
const HONEST = '127.0.0.9'
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-attack-'))
const children = new Set()
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill(c.spawnfile.endsWith('nginx') ? 'SIGTERM' : 'SIGKILL')))
process.on('SIGINT', () => process.exit(130))

const node = (script, ...args) => [process.execPath, join(root, script), ...args.map(String)]
/** name, what the table calls it, the tool it needs, the command against (url, port). */
const ATTACKS = [
  ['slowloris', 'slowloris (`slowhttptest -H`, 1,000 connections)', 'slowhttptest', (url) => ['slowhttptest', '-H', '-c', '1000', '-i', '10', '-r', '200', '-x', '24', '-p', '3', '-l', SECONDS, '-u', url]],
  ['slow-body', 'slow request bodies (`slowhttptest -B`, 1,000)', 'slowhttptest', (url) => ['slowhttptest', '-B', '-c', '1000', '-i', '10', '-r', '200', '-s', '8192', '-t', 'POST', '-x', '10', '-p', '3', '-l', SECONDS, '-u', url]],
  ['slow-read', 'slow readers of a 1 MiB answer (`slowhttptest -X`, 1,000)', 'slowhttptest', (url) => ['slowhttptest', '-X', '-c', '1000', '-r', '200', '-w', '512', '-y', '1024', '-n', '5', '-z', '32', '-k', '3', '-p', '3', '-l', SECONDS, '-u', `${url}big`]],
  ['rapid-reset', 'HTTP/2 rapid reset (CVE-2023-44487), 8 connections', null, (_url, port) => node('bench/attacks/h2.mjs', 'rapid-reset', port, 8, SECONDS)],
  ['continuation', 'HTTP/2 CONTINUATION flood, 16 connections', null, (_url, port) => node('bench/attacks/h2.mjs', 'continuation', port, 16, SECONDS)],
  ['h2load', '`h2load -c 50 -m 1000`', 'h2load', (url) => ['h2load', '-c', '50', '-m', '1000', '-D', SECONDS, url]],
  ['idle', '20,000 idle TLS connections (20 addresses)', null, (_url, port) => ['sh', '-c', `${node('bench/attacks/idle.mjs', port, 10000, SECONDS, 10).join(' ')} & ${node('bench/attacks/idle.mjs', port, 10000, SECONDS, 20).join(' ')} & wait`]],
  ['burst', '200 streams at once on a connection that advertised 100', null, (_url, port) => node('bench/attacks/h2.mjs', 'burst', port)],
].filter(([name]) => !flags.only || flags.only.split(',').includes(name))

/** slowhttptest, h2load and curl, installed with apt when missing (root only). */
function ensureTools() {
  const missing = ['slowhttptest', 'h2load', 'curl'].filter((c) => !which(c))
  if (missing.length === 0) return
  const packages = missing.map((c) => ({ h2load: 'nghttp2-client' })[c] ?? c)
  if (process.getuid?.() !== 0) return console.log(`missing: ${missing.join(', ')} (apt-get install -y ${packages.join(' ')}); their attacks are not run`)
  console.log(`installing ${packages.join(' ')}...`)
  spawnSync('apt-get', ['update'], { stdio: 'ignore' })
  spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
}

/** Starts a process whose output goes to a file; resolves once `port` accepts connections. */
async function start(name, argv, ready) {
  const log = join(tmp, `${name}.log`)
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', openSync(log, 'a'), openSync(log, 'a')], env: { ...process.env, ...(argv[0] === process.execPath && IMAGE_ENV) } })
  children.add(child)
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`${name} exited (${code}): ${readFileSync(log, 'utf8').trim().split('\n').slice(-3).join(' | ')}`))))
  exited.catch(() => {})
  child.once('exit', () => children.delete(child))
  await Promise.race([ready(), exited])
  return child
}

async function waitForPort(port) {
  for (let i = 0; i < 200; i++) {
    if (await fetch(`http://127.0.0.1:${port}/count`).then(() => true, () => false)) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nothing answers on ${port}`)
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once('exit', resolve)
    child.kill(child.spawnfile.endsWith('nginx') ? 'SIGTERM' : 'SIGKILL')
  })
}

/** Server-side sockets of `port` in CLOSE-WAIT: the client went, the server never closed. */
function closeWait(port) {
  const out = spawnSync('ss', ['-Htn', 'state', 'close-wait', `( sport = :${port} )`]).stdout?.toString() ?? ''
  return out.split('\n').filter(Boolean).length
}

/** One honest request: 200 within 1 s? */
function honest(url) {
  return new Promise((resolve) => {
    const curl = spawn('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '1', '--interface', HONEST, `${url}legit`])
    let out = ''
    curl.stdout.on('data', (c) => (out += c))
    curl.once('close', () => resolve(out === '200'))
  })
}

/** Honest requests every 250 ms until `stop()`; resolves with the share answered. */
function honestClient(url) {
  const results = []
  const timer = setInterval(() => results.push(honest(url)), 250)
  return async () => {
    clearInterval(timer)
    const ok = (await Promise.all(results)).filter(Boolean).length
    return { ok, total: results.length }
  }
}

async function sidecarTarget(name, appPort, certs) {
  const [port, admin] = [await freePort(), await freePort()]
  const file = join(tmp, `${name}.yaml`)
  const config = {
    listener: { address: `127.0.0.1:${port}`, tls: certs },
    admin: { address: `127.0.0.1:${admin}` },
    backends: [{ name: 'app', url: `http://127.0.0.1:${appPort}` }],
  }
  writeFileSync(file, JSON.stringify(config))
  const heap = flags.heap ? [`--max-old-space-size=${flags.heap}`] : []
  const child = await start(name, [process.execPath, ...heap, join(root, 'dist/main.js'), '--config', file], () => waitReady(admin))
  const breaker = async () => {
    const text = await fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(1000) }).then((r) => r.text(), () => '')
    return Number(/^sidecar_circuit_state\{backend="app"\} (\d)/m.exec(text)?.[1] ?? NaN)
  }
  return { child, port, pids: () => [child.pid], breaker }
}

async function nginxTarget(name, appPort, certs) {
  const port = await freePort()
  const dir = mkdtempSync(join(tmp, `${name}-`))
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid nginx.pid;
events { worker_connections 30000; }
http {
  access_log off;
  upstream app { server 127.0.0.1:${appPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${port} ssl http2;
    ssl_certificate ${certs.certFile};
    ssl_certificate_key ${certs.keyFile};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`,
  )
  const child = await start(name, ['nginx', '-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], () => waitForPort(port).catch(() => waitTls(port)))
  return { child, port, pids: () => [child.pid, nginxWorker(child.pid)], breaker: async () => null }
}

async function waitTls(port) {
  for (let i = 0; i < 200; i++) {
    if (spawnSync('curl', ['-sk', '-o', '/dev/null', `https://127.0.0.1:${port}/`]).status === 0) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nginx did not answer on ${port}`)
}

const appCount = (appPort) => fetch(`http://127.0.0.1:${appPort}/count`).then((r) => r.text()).then(Number)

/** One attack against one freshly started target. */
async function run(attack, makeTarget, appPort) {
  const [name, , , command] = attack
  const target = await makeTarget()
  const url = `https://127.0.0.1:${target.port}/`
  const pids = target.pids()
  const cpuBefore = pids.reduce((s, p) => s + cpuSeconds(p), 0)
  const appBefore = await appCount(appPort)
  let peakRss = 0
  let breaker = 0
  const sampler = setInterval(async () => {
    peakRss = Math.max(peakRss, pids.reduce((s, p) => s + memoryMiB(p, 'VmRSS'), 0))
    breaker = Math.max(breaker, (await target.breaker()) ?? 0)
  }, 250)
  const stopHonest = honestClient(url)
  const started = Date.now()
  const argv = command(url, target.port).map(String)
  const out = openSync(join(tmp, `${name}.out`), 'w')
  const attacker = spawn('nice', ['-n', '10', ...argv], { stdio: ['ignore', 'pipe', out] })
  children.add(attacker)
  let report = ''
  attacker.stdout.on('data', (c) => (report += c))
  const killer = setTimeout(() => attacker.kill('SIGKILL'), (SECONDS + 30) * 1000)
  await new Promise((resolve) => attacker.once('exit', resolve))
  clearTimeout(killer)
  children.delete(attacker)
  const during = await stopHonest()
  const seconds = (Date.now() - started) / 1000
  const cpuPercent = ((pids.reduce((s, p) => s + cpuSeconds(p), 0) - cpuBefore) / seconds) * 100
  // the 2 s after: served again?
  const after = await Promise.all(Array.from({ length: 8 }, (_, i) => new Promise((r) => setTimeout(r, i * 250)).then(() => honest(url))))
  clearInterval(sampler)
  const alive = target.child.exitCode === null
  const result = {
    attack: name,
    served: during.total ? during.ok / during.total : null,
    honestRequests: during.total,
    servedAfter: after.filter(Boolean).length / after.length,
    alive,
    peakRssMiB: Math.round(peakRss),
    cpuPercent: Math.round(cpuPercent),
    closeWait: closeWait(target.port),
    breakerOpened: (await target.breaker()) === null ? null : breaker > 0,
    reachedApp: (await appCount(appPort)) - appBefore,
    tool: lastJson(report),
  }
  await stop(target.child)
  return result
}

const lastJson = (text) => {
  const line = text.trim().split('\n').filter((l) => l.startsWith('{')).at(-1)
  return line ? JSON.parse(line) : undefined
}

/** RSS per idle TLS connection: 5,000 opened from 5 addresses, held, RSS before and with them. */
async function perConnection(makeTarget) {
  const target = await makeTarget()
  const pids = target.pids()
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const before = pids.reduce((s, p) => s + memoryMiB(p, 'VmRSS'), 0)
  const idle = spawn(process.execPath, [join(root, 'bench/attacks/idle.mjs'), target.port, 5000, 15, 30].map(String), { stdio: 'ignore' })
  children.add(idle)
  await new Promise((resolve) => setTimeout(resolve, 12_000))
  const withThem = pids.reduce((s, p) => s + memoryMiB(p, 'VmRSS'), 0)
  await new Promise((resolve) => idle.once('exit', resolve))
  await stop(target.child)
  return { connections: 5000, rssBeforeMiB: Math.round(before), rssWithMiB: Math.round(withThem), kibPerConnection: Math.round(((withThem - before) * 1024) / 5000) }
}

async function main() {
  ensureTools()
  const tools = { slowhttptest: which('slowhttptest'), h2load: which('h2load'), nginx: which('nginx') }
  if (!which('curl')) throw new Error('curl is needed for the honest client')
  execFileSync(process.execPath, [join(root, 'dist/main.js'), 'certs', '--out', join(tmp, 'certs')])
  const certs = { certFile: join(tmp, 'certs/tls.crt'), keyFile: join(tmp, 'certs/tls.key') }
  const appPort = await freePort()
  await start('app', node('bench/servers/attack-app.mjs', appPort), () => waitForPort(appPort))
  const targets = [['sidecar', () => sidecarTarget('sidecar', appPort, certs)]]
  if (tools.nginx) targets.push(['nginx', () => nginxTarget('nginx', appPort, certs)])
  else console.log('nginx not installed: the sidecar alone')

  const rows = []
  for (const attack of ATTACKS) {
    const [name, what, tool] = attack
    const row = { name, what, results: {} }
    rows.push(row)
    if (tool && !tools[tool]) {
      row.skipped = `${tool} missing`
      console.log(`${what}: not run (${tool} missing)`)
      continue
    }
    for (const [targetName, make] of targets) {
      const r = await run(attack, make, appPort)
      row.results[targetName] = r
      console.log(`${what.padEnd(60)} ${targetName.padEnd(8)} served ${pct(r.served)} (after: ${pct(r.servedAfter)}), RSS ${r.peakRssMiB} MiB, CPU ${r.cpuPercent}%, CLOSE-WAIT ${r.closeWait}${r.breakerOpened ? ', BREAKER OPENED' : ''}${r.tool ? ' ' + JSON.stringify(r.tool) : ''}, reached the app ${r.reachedApp}`)
    }
  }
  const memory = {}
  for (const [targetName, make] of targets) {
    memory[targetName] = await perConnection(make)
    console.log(`${targetName}: ${memory[targetName].kibPerConnection} KiB per idle TLS connection (${memory[targetName].rssBeforeMiB} -> ${memory[targetName].rssWithMiB} MiB with 5,000)`)
  }
  const results = { date: new Date().toISOString(), seconds: SECONDS, heapMiB: flags.heap ? Number(flags.heap) : undefined, machine: { cores: os.cpus().length, node: process.version }, rows, memory }
  const stamp = results.date.slice(0, 16).replace(/[-:]/g, '').replace('T', '-')
  const file = join(root, 'bench/results', `attack-${stamp}`)
  writeFileSync(`${file}.json`, JSON.stringify(results, null, 2) + '\n')
  writeFileSync(`${file}.md`, markdown(results))
  console.log('\n' + markdown(results))
  console.log(`written: bench/results/attack-${stamp}.{json,md}`)
  process.exit(0)
}

const pct = (x) => (x === null || x === undefined ? 'n/a' : `${Math.round(x * 100)}%`)

function markdown(r) {
  const cell = (x) => (x ? `${pct(x.served)}, ${x.peakRssMiB} MiB, CPU ${x.cpuPercent}%, CLOSE-WAIT ${x.closeWait}${x.alive ? '' : ', **died**'}` : 'not run')
  const lines = [
    `Attacks of ${r.seconds} s each (${r.date.slice(0, 10)}, ${r.machine.cores} cores, Node ${r.machine.node}${r.heapMiB ? `, the sidecar's V8 heap at most ${r.heapMiB} MiB` : ''}); honest requests answered 200 within 1 s during the attack, then the target's peak RSS, CPU and sockets left in CLOSE-WAIT.`,
    '',
    '| attack | sidecar | served after | breaker | nginx |',
    '|---|---|---|---|---|',
    ...r.rows.map((row) =>
      row.skipped
        ? `| ${row.what} | not run: ${row.skipped} | | | |`
        : `| ${row.what} | ${cell(row.results.sidecar)} | ${pct(row.results.sidecar?.servedAfter)} | ${row.results.sidecar?.breakerOpened ? '**opened**' : 'closed'} | ${cell(row.results.nginx)} |`,
    ),
    '',
    ...Object.entries(r.memory).map(([t, m]) => `- ${t}: ${m.kibPerConnection} KiB of RSS per idle TLS connection (${m.rssBeforeMiB} MiB, then ${m.rssWithMiB} MiB with ${m.connections.toLocaleString('en')}).`),
    ...r.rows
      .filter((row) => row.results.sidecar?.tool)
      .map((row) => `- ${row.name}, sidecar: ${JSON.stringify(row.results.sidecar.tool)}; requests that reached the app: ${row.results.sidecar.reachedApp}${row.results.nginx ? `; nginx: ${JSON.stringify(row.results.nginx.tool)}, reached the app ${row.results.nginx.reachedApp}` : ''}.`),
    '',
  ]
  return lines.join('\n')
}

await main()
