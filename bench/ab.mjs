// A focused A/B of CPU per request: `npm run build && node bench/ab.mjs [--against DIR]
// [--with JSON] [--rounds 6] [--seconds 5] [--rate 5000]`.
//
// The plain sidecar of this checkout, beside the same sidecar built from another checkout
// (`--against`: a directory holding a built dist/, e.g. a `git worktree` of an older commit),
// and/or beside itself with more config (`--with '{"routes": [...]}'`), and the bare forwarder,
// at a fixed rate, interleaved round by round so that the machine's drift hits all alike; the
// median CPU time per request (user + system, /proc) of each. `npm run bench -- --quick` windows
// of 3 s cannot resolve a few percent on a shared two-core machine; this can, given the rounds.
import { mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { cpuSeconds, freePort, median, processes, waitReady } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values } = parseArgs({
  options: { against: { type: 'string' }, with: { type: 'string' }, rounds: { type: 'string' }, seconds: { type: 'string' }, rate: { type: 'string' } },
})
const ROUNDS = Number(values.rounds ?? 6)
const SECONDS = Number(values.seconds ?? 5)
const RATE = Number(values.rate ?? 5000)
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-ab-'))
const { start } = processes(tmp)

const upstreamPort = await freePort()
await start('upstream', [join(root, 'bench/servers/upstream.mjs'), String(upstreamPort)], upstreamPort)
const upstream = `http://127.0.0.1:${upstreamPort}`

/** A sidecar of the checkout at `dir`, plain HTTP, its access log to a file, with `extra` config. */
async function sidecar(name, dir, extra = {}) {
  const [port, admin] = [await freePort(), await freePort()]
  const file = join(tmp, `${name}.json`)
  const config = { listener: { address: `127.0.0.1:${port}`, tls: false }, admin: { address: `127.0.0.1:${admin}` }, backends: [{ name: 'app', url: upstream }] }
  writeFileSync(file, JSON.stringify({ ...config, ...extra }))
  const pid = await start(name, [join(dir, 'dist/main.js'), '--config', file], port)
  await waitReady(admin)
  return { name, pid, url: `http://127.0.0.1:${port}/`, runs: [] }
}

const targets = [await sidecar('this', root)]
if (values.against) targets.push(await sidecar('against', values.against))
if (values.with) targets.push(await sidecar('this+with', root, JSON.parse(values.with)))
const barePort = await freePort()
targets.push({ name: 'bare-undici', pid: await start('bare', [join(root, 'bench/servers/bare-undici.mjs'), String(barePort), upstream], barePort), url: `http://127.0.0.1:${barePort}/`, runs: [] })

for (const t of targets) await autocannon({ url: t.url, connections: 64, duration: 2 }) // warm-up: JIT, pools
for (let round = 1; round <= ROUNDS; round++) {
  for (const t of targets) {
    const before = cpuSeconds(t.pid)
    const r = await autocannon({ url: t.url, connections: 64, duration: SECONDS, overallRate: RATE })
    t.runs.push(((cpuSeconds(t.pid) - before) / r.requests.total) * 1e6)
  }
}
const base = median(targets[0].runs)
console.log(`${ROUNDS} rounds of ${SECONDS} s at ${RATE} req/s; CPU us per request, median (every round)`)
for (const t of targets) {
  const m = median(t.runs)
  console.log(`${t.name.padEnd(12)} ${m.toFixed(1).padStart(6)}  ${(m / base).toFixed(3)}x this   (${t.runs.map((x) => x.toFixed(0)).join(' ')})`)
}
process.exit(0)
