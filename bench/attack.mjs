// The front door under attack: `npm run attack` (about 16 minutes; `-- --seconds N` per attack,
// `-- --only slow-body,rapid-reset` for some, `-- --only ingress` or `memory` for those cases
// alone). Each attack runs with real tools against the built sidecar (TLS, HTTP/2, default
// limits) and, when installed, nginx beside it (one worker, the same certificate and app), each
// target started fresh for each run, the attack processes at nice 10. Meanwhile an honest client
// (curl over TLS) asks every 250 ms; the figure is the share of its requests answered 200 within
// 1 s. Every attack runs twice (`-- --address shared|own|both`, both by default): with the honest
// client on the attacker's own address, as when both come through one ingress or NAT (the
// headline: a defence that counts per address must not take the crowd for the attacker), and on
// an address of its own, 127.0.0.9. Also: the target's peak RSS and CPU, sockets left in
// CLOSE-WAIT after the attack, the sidecar's breaker, whether the target serves in the 2 s after,
// and the memory an idle TLS connection costs. Then the busy ingress: 400 requests in flight from
// one address against a 500 ms app, plain and TLS, the sidecar's p99 against nginx's and every
// refusal counted. slowhttptest, h2load (nghttp2-client) and wrk are installed with apt when
// missing and root.
// `-- --heap MiB` runs the sidecar with that V8 heap ceiling (--max-old-space-size), as Node sizes
// it in a container with a memory limit; without it, V8 on a large machine collects lazily and
// the peak RSS is mostly garbage.
// Results go to bench/results/attack-*.{json,md}.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { IMAGE_ENV, cpuSeconds, freePort, freePorts, memoryMiB, nginxWorker, waitReady, which } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values: flags } = parseArgs({ options: { seconds: { type: 'string' }, only: { type: 'string' }, heap: { type: 'string' }, address: { type: 'string', default: 'both' } } })
const SECONDS = Number(flags.seconds ?? 20)
/** The honest client's own address, in the runs where it has one. */
const HONEST = '127.0.0.9'
/** Where slowhttptest, h2load, wrk and h2.mjs connect from: a connection to 127.0.0.1 leaves from 127.0.0.1. */
const ATTACKER = '127.0.0.1'
/** The runs of each attack: the honest client on the attacker's address, then on its own. */
const ADDRESSES = { both: ['shared', 'own'], shared: ['shared'], own: ['own'] }[flags.address]
if (!ADDRESSES) throw new Error(`--address ${flags.address}: shared, own or both`)
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-attack-'))
const children = new Set()
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill(c.spawnfile.endsWith('nginx') ? 'SIGTERM' : 'SIGKILL')))
process.on('SIGINT', () => process.exit(130))

const node = (script, ...args) => [process.execPath, join(root, script), ...args.map(String)]
/** Each attack: its name (for --only), what the table calls it, the tool it needs, the address it
 *  connects from (the honest client's in the shared run), its command against (url, port), and
 *  for some, the tool's report in words for the table. */
const ATTACKS = [
  { name: 'slowloris', what: 'slowloris (`slowhttptest -H`, 1,000 connections)', tool: 'slowhttptest', from: ATTACKER, command: (url) => ['slowhttptest', '-H', '-c', '1000', '-i', '10', '-r', '200', '-x', '24', '-p', '3', '-l', SECONDS, '-u', url] },
  { name: 'slow-body', what: 'slow request bodies (`slowhttptest -B`, 1,000)', tool: 'slowhttptest', from: ATTACKER, command: (url) => ['slowhttptest', '-B', '-c', '1000', '-i', '10', '-r', '200', '-s', '8192', '-t', 'POST', '-x', '10', '-p', '3', '-l', SECONDS, '-u', url] },
  { name: 'slow-read', what: 'slow readers of a 1 MiB answer (`slowhttptest -X`, 1,000)', tool: 'slowhttptest', from: ATTACKER, command: (url) => ['slowhttptest', '-X', '-c', '1000', '-r', '200', '-w', '512', '-y', '1024', '-n', '5', '-z', '32', '-k', '3', '-p', '3', '-l', SECONDS, '-u', `${url}big`] },
  { name: 'rapid-reset', what: 'HTTP/2 rapid reset (CVE-2023-44487), 8 connections', from: ATTACKER, command: (_url, port) => node('bench/attacks/h2.mjs', 'rapid-reset', port, 8, SECONDS) },
  { name: 'continuation', what: 'HTTP/2 CONTINUATION flood, 16 connections', from: ATTACKER, command: (_url, port) => node('bench/attacks/h2.mjs', 'continuation', port, 16, SECONDS) },
  { name: 'h2load', what: '`h2load -c 50 -m 1000`', tool: 'h2load', from: ATTACKER, command: (url) => ['h2load', '-c', '50', '-m', '1000', '-D', SECONDS, url] },
  // idle.mjs spreads its connections 1,000 to an address from 127.0.0.FIRST on: the shared run's
  // honest client takes the first of them
  { name: 'idle', what: '20,000 idle TLS connections (20 addresses)', from: '127.0.0.10', command: (_url, port) => ['sh', '-c', `${node('bench/attacks/idle.mjs', port, 10000, SECONDS, 10).join(' ')} & ${node('bench/attacks/idle.mjs', port, 10000, SECONDS, 20).join(' ')} & wait`] },
  { name: 'burst', what: '200 streams at once on a connection that advertised 100', from: ATTACKER, command: (_url, port) => node('bench/attacks/h2.mjs', 'burst', port), words: burstWords },
]
/** Cases beside the attacks that --only can name. */
const CASES = ['ingress', 'memory']
const only = flags.only?.split(',')
const unknown = only?.filter((name) => !CASES.includes(name) && !ATTACKS.some((a) => a.name === name))
if (unknown?.length) throw new Error(`--only ${unknown.join(',')}: not an attack (${[...ATTACKS.map((a) => a.name), ...CASES].join(', ')})`)
const selected = (name) => !only || only.includes(name)

/** HTTP/2 error codes by number (RFC 9113 7), for the words. */
const H2_ERRORS = ['NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT', 'STREAM_CLOSED', 'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR', 'ENHANCE_YOUR_CALM']
/** How soon after the burst a close still counts as "at once": well before the probe 2 s later. */
const AT_ONCE_MS = 500

const h2Error = (code) => H2_ERRORS[code] ?? `error ${code}`

/** The burst's report (h2.mjs) in words: "100 advertised: answered 100, refused 100, connection
 *  alive". A close is said with or without its GOAWAY, since the target asks for one. */
function burstWords(t) {
  const parts = [`answered ${t.answered}`, `refused ${t.refused}`]
  if (t.otherResets) parts.push(`other resets ${t.otherResets} (${Object.keys(t.otherResetCodes ?? {}).map(h2Error).join(', ')})`)
  if (t.goaway !== null) parts.push(`GOAWAY ${h2Error(t.goaway)}`)
  parts.push(t.alive ? `connection alive (the stream after: ${t.probe})` : `${t.goaway === null ? 'no GOAWAY, ' : ''}connection closed ${t.closedAfterMs} ms after the burst`)
  return `${t.advertised ?? 'no limit'} advertised: ${parts.join(', ')}: ${burstMet(t) ? 'target met' : '**target missed**'}`
}

/** The burst's target: exactly the streams past the advertised limit refused and the others
 *  answered, the connection serving on; or, where Node's http2 cannot (nghttp2 ends a connection
 *  that opens streams past a limit it acknowledged, as h2.mjs does), closed at once with a GOAWAY. */
function burstMet(t) {
  const limit = Math.min(t.burst, t.advertised ?? Infinity)
  const exact = t.answered === limit && t.refused === t.burst - limit && t.otherResets === 0 && t.alive && t.probe === 'answered'
  const closedAtOnce = t.goaway !== null && !t.alive && t.closedAfterMs <= AT_ONCE_MS
  return exact || closedAtOnce
}

/** slowhttptest, h2load, wrk and curl, installed with apt when missing (root only). */
function ensureTools() {
  const missing = ['slowhttptest', 'h2load', 'wrk', 'curl'].filter((c) => !which(c))
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

/** One honest request from `from`: 200 within 1 s? */
function honest(url, from) {
  return new Promise((resolve) => {
    const curl = spawn('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '1', '--interface', from, `${url}legit`])
    let out = ''
    curl.stdout.on('data', (c) => (out += c))
    curl.once('close', () => resolve(out === '200'))
  })
}

/** Honest requests from `from` every 250 ms until `stop()`; resolves with the share answered. */
function honestClient(url, from) {
  const results = []
  const timer = setInterval(() => results.push(honest(url, from)), 250)
  return async () => {
    clearInterval(timer)
    const ok = (await Promise.all(results)).filter(Boolean).length
    return { ok, total: results.length }
  }
}

/** The sidecar with its default limits: TLS, or plain HTTP (the ingress case's plain run) when
 *  `certs` is false, the one thing set beside the addresses and the backend. */
async function sidecarTarget(name, appPort, certs) {
  const [port, admin] = await freePorts(2)
  const file = join(tmp, `${name}.yaml`)
  const config = {
    listener: { address: `127.0.0.1:${port}`, tls: certs },
    admin: { address: `127.0.0.1:${admin}` },
    backends: [{ name: 'app', url: `http://127.0.0.1:${appPort}` }],
  }
  writeFileSync(file, JSON.stringify(config))
  const heap = flags.heap ? [`--max-old-space-size=${flags.heap}`] : []
  const child = await start(name, [process.execPath, ...heap, join(root, 'dist/main.js'), '--config', file], () => waitReady(admin))
  const metrics = (timeout) => fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(timeout) }).then((r) => r.text(), () => null)
  const breaker = async () => Number(/^sidecar_circuit_state\{backend="app"\} (\d)/m.exec((await metrics(1000)) ?? '')?.[1] ?? NaN)
  /** sidecar_rejected_requests_total by reason; null when the admin port did not answer. */
  const rejections = async () => {
    const text = await metrics(5000)
    return text === null ? null : Object.fromEntries([...text.matchAll(/^sidecar_rejected_requests_total\{reason="([^"]+)"\} (\d+)/gm)].map((m) => [m[1], Number(m[2])]))
  }
  const url = certs ? { https: `https://127.0.0.1:${port}/` } : { http: `http://127.0.0.1:${port}/` }
  return { child, port, url, pids: () => [child.pid], breaker, rejections }
}

/** nginx: one worker, a TLS listener (HTTP/2 too) and a plain one, both to the app. */
async function nginxTarget(name, appPort, certs) {
  const [port, plainPort] = await freePorts(2)
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
    listen 127.0.0.1:${plainPort};
    ssl_certificate ${certs.certFile};
    ssl_certificate_key ${certs.keyFile};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`,
  )
  const child = await start(name, ['nginx', '-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], () => waitForPort(plainPort))
  const url = { https: `https://127.0.0.1:${port}/`, http: `http://127.0.0.1:${plainPort}/` }
  return { child, port, url, pids: () => [child.pid, nginxWorker(child.pid)], breaker: async () => null }
}

const appCount = (appPort) => fetch(`http://127.0.0.1:${appPort}/count`).then((r) => r.text()).then(Number)

/** Runs `argv` at nice 10 (the target keeps its priority over the load) until it exits, killed
 *  if it overstays by 30 s; resolves with its stdout. */
async function niced(name, argv, seconds) {
  const err = openSync(join(tmp, `${name}.out`), 'w')
  const child = spawn('nice', ['-n', '10', ...argv.map(String)], { stdio: ['ignore', 'pipe', err] })
  children.add(child)
  let out = ''
  child.stdout.on('data', (c) => (out += c))
  const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000)
  await new Promise((resolve) => child.once('exit', resolve))
  clearTimeout(killer)
  children.delete(child)
  return out
}

/** One attack against one freshly started target, the honest client on the attacker's address
 *  (`shared`) or on its own (`own`). */
async function run(attack, makeTarget, appPort, address) {
  const target = await makeTarget()
  const url = target.url.https
  const from = address === 'shared' ? attack.from : HONEST
  const pids = target.pids()
  const cpuBefore = pids.reduce((s, p) => s + cpuSeconds(p), 0)
  const appBefore = await appCount(appPort)
  let peakRss = 0
  let breaker = 0
  const sampler = setInterval(async () => {
    peakRss = Math.max(peakRss, pids.reduce((s, p) => s + memoryMiB(p, 'VmRSS'), 0))
    breaker = Math.max(breaker, (await target.breaker()) ?? 0)
  }, 250)
  const stopHonest = honestClient(url, from)
  const started = Date.now()
  const report = await niced(attack.name, attack.command(url, target.port), SECONDS)
  const during = await stopHonest()
  const seconds = (Date.now() - started) / 1000
  const cpuPercent = ((pids.reduce((s, p) => s + cpuSeconds(p), 0) - cpuBefore) / seconds) * 100
  // the 2 s after: served again?
  const after = await Promise.all(Array.from({ length: 8 }, (_, i) => new Promise((r) => setTimeout(r, i * 250)).then(() => honest(url, from))))
  clearInterval(sampler)
  const tool = lastJson(report)
  const result = {
    attack: attack.name,
    address,
    honestFrom: from,
    served: during.total ? during.ok / during.total : null,
    honestRequests: during.total,
    servedAfter: after.filter(Boolean).length / after.length,
    alive: target.child.exitCode === null,
    peakRssMiB: Math.round(peakRss),
    cpuPercent: Math.round(cpuPercent),
    closeWait: closeWait(target.port),
    breakerOpened: (await target.breaker()) === null ? null : breaker > 0,
    reachedApp: (await appCount(appPort)) - appBefore,
    tool,
    outcome: tool && attack.words ? attack.words(tool) : undefined,
  }
  await stop(target.child)
  return result
}

const lastJson = (text) => {
  const line = text.trim().split('\n').filter((l) => l.startsWith('{')).at(-1)
  return line ? JSON.parse(line) : undefined
}

/** The busy ingress: the clients of a load balancer or NAT reach the proxy from one address, 400
 *  requests in flight at once (HTTP/1.1 keep-alive) against an app that answers in 500 ms. The
 *  target: the sidecar's p99 at most 1.25 times nginx's, and not one refusal. */
const INGRESS = { connections: 400, appMs: 500, warmupSeconds: 3, maxRatio: 1.25 }

/** wrk's figures: requests, answers not 2xx (wrk counts "Non-2xx or 3xx"; the app never
 *  redirects), socket errors, and the p50 and p99 latency in ms. */
function parseWrk(text) {
  const MS = { us: 0.001, ms: 1, s: 1000, m: 60_000 }
  const latency = (p) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(text)
    return m ? Number(m[1]) * MS[m[2]] : null
  }
  // wrk prints the socket errors' line only when there were some
  const [connect, read, write, timeout] = (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text)?.slice(1) ?? [0, 0, 0, 0]).map(Number)
  return {
    requests: Number(/(\d+) requests in/.exec(text)?.[1] ?? NaN),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0),
    socketErrors: { connect, read, write, timeout },
    p50Ms: latency(50),
    p99Ms: latency(99),
  }
}

const wrk = (name, url, seconds) => niced(name, ['wrk', '-t2', `-c${INGRESS.connections}`, `-d${seconds}s`, '--latency', url], seconds).then(parseWrk)

/** Counts by reason in `after` less those in `before`, the reasons that moved. */
function difference(before, after) {
  if (!before || !after) return null
  return Object.fromEntries(Object.entries(after).map(([reason, n]) => [reason, n - (before[reason] ?? 0)]).filter(([, n]) => n !== 0))
}

/** The busy ingress against each target, plain HTTP then TLS, each target started fresh and
 *  warmed up (connections opened, code compiled) before the measured run. */
async function ingress(targets) {
  const rows = []
  for (const scheme of ['http', 'https']) {
    for (const [targetName, make] of targets) {
      const target = await make({ scheme })
      const url = `${target.url[scheme]}slow?ms=${INGRESS.appMs}`
      console.log(`ingress, ${targetName} ${scheme}: a ${INGRESS.warmupSeconds} s warm-up run, then ${SECONDS} s measured`)
      await wrk(`ingress-${targetName}-${scheme}-warmup`, url, INGRESS.warmupSeconds)
      const before = await target.rejections?.()
      const r = await wrk(`ingress-${targetName}-${scheme}`, url, SECONDS)
      // nginx counts no refusals of its own: its non-2xx and socket errors say it all
      const rejected = target.rejections ? difference(before, await target.rejections()) : undefined
      await stop(target.child)
      const refusals = r.non2xx + Object.values(r.socketErrors).reduce((a, b) => a + b, 0)
      rows.push({ target: targetName, scheme, ...r, refusals, rejected })
    }
  }
  for (const row of rows.filter((r) => r.target === 'sidecar')) {
    const nginx = rows.find((r) => r.target === 'nginx' && r.scheme === row.scheme)
    row.p99VsNginx = nginx?.p99Ms ? row.p99Ms / nginx.p99Ms : null
    row.targetMet = row.p99VsNginx === null ? null : row.refusals === 0 && row.p99VsNginx <= INGRESS.maxRatio
  }
  for (const r of rows) console.log(`ingress, ${r.target.padEnd(8)} ${r.scheme.padEnd(5)} ${ingressWords(r)}`)
  return rows
}

const errorsWords = (e) => `${e.connect}/${e.read}/${e.write}/${e.timeout}`
const ms = (x) => (x === null || x === undefined ? 'n/a' : `${x.toFixed(1)} ms`)
const rejectedWords = (r) => (r === undefined ? '' : r === null ? 'unknown' : Object.entries(r).map(([reason, n]) => `${reason} ${n}`).join(', ') || 'none')
const ratioWords = (r) => (r.p99VsNginx === undefined ? '' : r.p99VsNginx === null ? 'n/a' : `${r.p99VsNginx.toFixed(2)}x`)
const ingressWords = (r) =>
  `${r.requests} requests, non-2xx ${r.non2xx}, socket errors (connect/read/write/timeout) ${errorsWords(r.socketErrors)}, p50 ${ms(r.p50Ms)}, p99 ${ms(r.p99Ms)}${r.p99VsNginx !== undefined ? `, p99 ${ratioWords(r)} nginx's, rejected: ${rejectedWords(r.rejected)}` : ''}`

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

/** Each selected attack against each target, once per address (shared, own). */
async function attacks(targets, tools, appPort) {
  const rows = []
  for (const attack of ATTACKS.filter((a) => selected(a.name))) {
    const row = { name: attack.name, what: attack.what, from: attack.from, results: {} }
    rows.push(row)
    if (attack.tool && !tools[attack.tool]) {
      row.skipped = `${attack.tool} missing`
      console.log(`${attack.what}: not run (${attack.tool} missing)`)
      continue
    }
    for (const [targetName, make] of targets) {
      row.results[targetName] = {}
      for (const address of ADDRESSES) {
        const r = await run(attack, make, appPort, address)
        row.results[targetName][address] = r
        console.log(`${attack.what.padEnd(60)} ${targetName.padEnd(8)} ${address.padEnd(6)} (honest from ${r.honestFrom}) served ${pct(r.served)} (after: ${pct(r.servedAfter)}), RSS ${r.peakRssMiB} MiB, CPU ${r.cpuPercent}%, CLOSE-WAIT ${r.closeWait}${r.breakerOpened ? ', BREAKER OPENED' : ''}${r.tool ? ' ' + JSON.stringify(r.tool) : ''}${r.outcome ? ` (${r.outcome})` : ''}, reached the app ${r.reachedApp}`)
      }
    }
  }
  return rows
}

async function main() {
  ensureTools()
  const tools = { slowhttptest: which('slowhttptest'), h2load: which('h2load'), nginx: which('nginx'), wrk: which('wrk') }
  if (!which('curl')) throw new Error('curl is needed for the honest client')
  execFileSync(process.execPath, [join(root, 'dist/main.js'), 'certs', '--out', join(tmp, 'certs')])
  const certs = { certFile: join(tmp, 'certs/tls.crt'), keyFile: join(tmp, 'certs/tls.key') }
  const appPort = await freePort()
  await start('app', node('bench/servers/attack-app.mjs', appPort), () => waitForPort(appPort))
  /** name, and a function starting it fresh: TLS, or with `{ scheme: 'http' }` a plain listener. */
  const targets = [['sidecar', (o) => sidecarTarget('sidecar', appPort, o?.scheme === 'http' ? false : certs)]]
  if (tools.nginx) targets.push(['nginx', () => nginxTarget('nginx', appPort, certs)])
  else console.log('nginx not installed: the sidecar alone')

  const rows = await attacks(targets, tools, appPort)
  let busy
  if (selected('ingress')) {
    if (tools.wrk) busy = await ingress(targets)
    else console.log('the busy ingress: not run (wrk missing)')
  }
  const memory = {}
  if (selected('memory')) {
    for (const [targetName, make] of targets) {
      memory[targetName] = await perConnection(make)
      console.log(`${targetName}: ${memory[targetName].kibPerConnection} KiB per idle TLS connection (${memory[targetName].rssBeforeMiB} -> ${memory[targetName].rssWithMiB} MiB with 5,000)`)
    }
  }
  const results = {
    date: new Date().toISOString(),
    seconds: SECONDS,
    heapMiB: flags.heap ? Number(flags.heap) : undefined,
    machine: { cores: os.cpus().length, node: process.version },
    addresses: ADDRESSES,
    honest: { own: HONEST, shared: "the attacker's (each row's from)" },
    rows,
    ingress: busy && { ...INGRESS, seconds: SECONDS, from: ATTACKER, rows: busy },
    memory,
  }
  const stamp = results.date.slice(0, 16).replace(/[-:]/g, '').replace('T', '-')
  const file = join(root, 'bench/results', `attack-${stamp}`)
  writeFileSync(`${file}.json`, JSON.stringify(results, null, 2) + '\n')
  writeFileSync(`${file}.md`, markdown(results))
  console.log('\n' + markdown(results))
  console.log(`written: bench/results/attack-${stamp}.{json,md}`)
  process.exit(0)
}

const pct = (x) => (x === null || x === undefined ? 'n/a' : `${Math.round(x * 100)}%`)

/** The attacks' table, the headline the shared-address columns; then the busy ingress's. */
function markdown(r) {
  const cell = (x) => (x ? `${x.outcome ? `${x.outcome}; ` : ''}${pct(x.served)}, ${x.peakRssMiB} MiB, CPU ${x.cpuPercent}%, CLOSE-WAIT ${x.closeWait}${x.alive ? '' : ', **died**'}` : 'not run')
  /** One figure of the sidecar's runs, shared / own. */
  const both = (row, f) => r.addresses.map((a) => (row.results.sidecar?.[a] ? f(row.results.sidecar[a]) : 'not run')).join(' / ')
  const breaker = (x) => (x.breakerOpened ? '**opened**' : 'closed')
  const burst = r.rows.find((row) => row.name === 'burst' && !row.skipped)
  const table = r.rows.length === 0 ? [] : [
    `Attacks of ${r.seconds} s each (${r.date.slice(0, 10)}, ${r.machine.cores} cores, Node ${r.machine.node}${r.heapMiB ? `, the sidecar's V8 heap at most ${r.heapMiB} MiB` : ''}); honest requests answered 200 within 1 s during the attack, then the target's peak RSS, CPU and sockets left in CLOSE-WAIT. "Shared address": the honest client connects from the attacker's address (127.0.0.1; the idle flood's first, 127.0.0.10), as when both come through one ingress or NAT; "own address": from ${r.honest.own}.`,
    '',
    `| attack | sidecar, shared address | sidecar, own address | served after (${r.addresses.join(' / ')}) | breaker (${r.addresses.join(' / ')}) | nginx, shared | nginx, own |`,
    '|---|---|---|---|---|---|---|',
    ...r.rows.map((row) =>
      row.skipped
        ? `| ${row.what} | not run: ${row.skipped} | | | | | |`
        : `| ${row.what} | ${cell(row.results.sidecar?.shared)} | ${cell(row.results.sidecar?.own)} | ${both(row, (x) => pct(x.servedAfter))} | ${both(row, breaker)} | ${cell(row.results.nginx?.shared)} | ${cell(row.results.nginx?.own)} |`,
    ),
    '',
    ...(burst
      ? [
          "The burst's target: exactly the streams past the advertised limit refused (REFUSED_STREAM) and the others answered, the connection serving on; or, where Node's http2 cannot (nghttp2 ends a connection that opens streams past a limit the client acknowledged, as this client does), the connection closed at once with a GOAWAY (within " + AT_ONCE_MS + ' ms).',
          '',
        ]
      : []),
  ]
  const lines = [
    ...table,
    ...(r.ingress ? ingressMarkdown(r.ingress) : []),
    ...Object.entries(r.memory).map(([t, m]) => `- ${t}: ${m.kibPerConnection} KiB of RSS per idle TLS connection (${m.rssBeforeMiB} MiB, then ${m.rssWithMiB} MiB with ${m.connections.toLocaleString('en')}).`),
    ...r.rows.flatMap((row) =>
      r.addresses
        .filter((a) => row.results.sidecar?.[a]?.tool)
        .map((a) => `- ${row.name} (${a}), sidecar: ${JSON.stringify(row.results.sidecar[a].tool)}; requests that reached the app: ${row.results.sidecar[a].reachedApp}${row.results.nginx?.[a] ? `; nginx: ${JSON.stringify(row.results.nginx[a].tool)}, reached the app ${row.results.nginx[a].reachedApp}` : ''}.`),
    ),
    '',
  ]
  return lines.join('\n')
}

function ingressMarkdown(i) {
  return [
    `The busy ingress: ${i.connections} requests in flight from one address (${i.from}; \`wrk -t2 -c${i.connections} -d${i.seconds}s --latency\`, HTTP/1.1 keep-alive, at nice 10) against an app answering in ${i.appMs} ms, each target started fresh and warmed up by a ${i.warmupSeconds} s run before the ${i.seconds} s measured. The target: the sidecar's p99 at most ${i.maxRatio}x nginx's, and 0 refusals (an answer not 2xx or a socket error is one). "Rejected": the sidecar's sidecar_rejected_requests_total over the measured run, by reason.`,
    '',
    '| target | scheme | requests | non-2xx | socket errors (connect/read/write/timeout) | p50 | p99 | p99 / nginx | rejected | target |',
    '|---|---|---:|---:|---|---:|---:|---:|---|---|',
    ...i.rows.map(
      (r) =>
        `| ${r.target} | ${r.scheme} | ${r.requests} | ${r.non2xx} | ${errorsWords(r.socketErrors)} | ${ms(r.p50Ms)} | ${ms(r.p99Ms)} | ${ratioWords(r)} | ${rejectedWords(r.rejected)} | ${r.targetMet === undefined ? '' : r.targetMet === null ? 'n/a (no nginx)' : r.targetMet ? 'met' : '**missed**'} |`,
    ),
    '',
  ]
}

await main()
