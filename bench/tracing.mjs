// Tracing's cost alone: `npm run build && node bench/tracing.mjs [--rounds 7] [--seconds 5]`.
// The plain sidecar with tracing off, on at sampleRatio 0.01 and at 1.0 (exporting to a collector
// stand-in, bench/servers/otlp-sink.mjs), and the bare forwarder, at a fixed rate, interleaved
// round by round (the machine's drift hits all alike); medians of the CPU per request (user +
// system, /proc) and RSS idle and after the runs. The full benchmark (bench/run.mjs) has the
// same two tracing rows among its targets; this is the quick, focused A/B.
import { mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { cpuSeconds, freePort, median, memoryMiB, processes, waitReady } from './lib.mjs'

const root = new URL('..', import.meta.url).pathname
const { values } = parseArgs({ options: { rounds: { type: 'string' }, seconds: { type: 'string' }, rate: { type: 'string' } } })
const ROUNDS = Number(values.rounds ?? 7)
const SECONDS = Number(values.seconds ?? 5)
const RATE = Number(values.rate ?? 5000)
const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-bench-tracing-'))
const { start } = processes(tmp)

const upstreamPort = await freePort()
await start('upstream', [join(root, 'bench/servers/upstream.mjs'), String(upstreamPort)], upstreamPort)
const upstream = `http://127.0.0.1:${upstreamPort}`
const sinkPort = await freePort()
await start('otlp-sink', [join(root, 'bench/servers/otlp-sink.mjs'), String(sinkPort)], sinkPort)

const targets = []
for (const [name, tracing] of [
  ['sidecar (tracing off)', undefined],
  ['tracing on, sampleRatio 0.01', { otlp: { endpoint: `http://127.0.0.1:${sinkPort}` }, sampleRatio: 0.01 }],
  ['tracing on, sampleRatio 1.0', { otlp: { endpoint: `http://127.0.0.1:${sinkPort}` }, sampleRatio: 1 }],
]) {
  const [port, admin] = [await freePort(), await freePort()]
  const file = join(tmp, `${targets.length}.json`)
  writeFileSync(file, JSON.stringify({ listener: { address: `127.0.0.1:${port}`, tls: false }, admin: { address: `127.0.0.1:${admin}` }, backends: [{ name: 'app', url: upstream }], ...(tracing && { tracing }) }))
  const pid = await start(name.replace(/\W+/g, '-'), [join(root, 'dist/main.js'), '--config', file], port)
  await waitReady(admin)
  targets.push({ name, pid, url: `http://127.0.0.1:${port}/`, cpu: [] })
}
const barePort = await freePort()
targets.push({ name: 'bare forwarder', pid: await start('bare', [join(root, 'bench/servers/bare-undici.mjs'), String(barePort), upstream], barePort), url: `http://127.0.0.1:${barePort}/`, cpu: [] })

await new Promise((resolve) => setTimeout(resolve, 2000))
for (const t of targets) t.idleRss = memoryMiB(t.pid, 'VmRSS')
for (const t of targets) await autocannon({ url: t.url, connections: 64, duration: 2 }) // warm-up
for (let round = 1; round <= ROUNDS; round++) {
  for (const t of targets) {
    const before = cpuSeconds(t.pid)
    const r = await autocannon({ url: t.url, connections: 64, duration: SECONDS, overallRate: RATE })
    const us = ((cpuSeconds(t.pid) - before) / r.requests.total) * 1e6
    if (r.errors + r.timeouts + r.non2xx > 0) console.error(`${t.name}: ${r.errors + r.timeouts + r.non2xx} errors`)
    t.cpu.push(us)
    console.log(`round ${round} ${t.name.padEnd(30)} ${us.toFixed(1)} us CPU/request`)
  }
}
const off = median(targets[0].cpu)
console.log(`\n${ROUNDS} rounds of ${SECONDS} s at ${RATE} req/s, 64 connections, medians; Node ${process.version}, ${os.cpus().length} cores\n`)
console.log('| target | CPU us/request | vs tracing off | RSS idle (MiB) | RSS after the runs (MiB) |')
console.log('| --- | ---: | ---: | ---: | ---: |')
for (const t of targets) {
  const cpu = median(t.cpu)
  console.log(`| ${t.name} | ${cpu.toFixed(1)} (${Math.min(...t.cpu).toFixed(0)}-${Math.max(...t.cpu).toFixed(0)}) | ${(cpu / off).toFixed(2)}x | ${t.idleRss.toFixed(0)} | ${memoryMiB(t.pid, 'VmRSS').toFixed(0)} |`)
}
process.exit(0)
