// The cost of the sidecar for WebSocket messages and gRPC unary calls, against the same echo
// servers reached directly and through each protocol's Node floor (bench/servers/ws-floor.mjs,
// grpc-floor.mjs: the same traffic forwarded the most minimal way), measured in one run:
// messages or calls per second with 32 clients each waiting for its answer before the next, and
// the CPU time per message or call of the sidecar and of the floor.
// The clients (`ws`, `@grpc/grpc-js`) run in the bench process; the servers and the sidecar in
// their own. Run by bench/run.mjs, or alone: `node bench/protocols.mjs [--seconds N]`.
import { spawn } from 'node:child_process'
import { writeFileSync, mkdtempSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import * as grpc from '@grpc/grpc-js'
import WebSocket from 'ws'
import { cpuSeconds, freePort, waitReady } from './lib.mjs'
import { renderProtocols } from './report.mjs'

const root = new URL('..', import.meta.url).pathname
const CLIENTS = 32
const MESSAGE = Buffer.alloc(64, 'x')

/** Starts `node script args`, resolving with the child once it prints "listening". */
function startNode(children, script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    children.push(child)
    child.stdout.on('data', (c) => c.toString().includes('listening') && resolve(child))
    child.once('exit', (code) => reject(new Error(`${script} exited ${code}`)))
  })
}

async function startSidecar(children, tmp, name, backend) {
  const [port, admin] = [await freePort(), await freePort()]
  const file = join(tmp, `${name}.yaml`)
  writeFileSync(file, JSON.stringify({ listener: { address: `127.0.0.1:${port}`, tls: false }, admin: { address: `127.0.0.1:${admin}` }, backends: [backend], log: { accessLog: false } }))
  const child = spawn(process.execPath, [join(root, 'dist/main.js'), '--config', file], { stdio: 'ignore' })
  children.push(child)
  await waitReady(admin)
  return { port, pid: child.pid }
}

/** Messages per second over `seconds`, CLIENTS WebSocket clients each echoing back to back. */
async function wsLoad(url, seconds) {
  const end = Date.now() + seconds * 1000
  let count = 0
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      const ws = new WebSocket(url)
      await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
      await new Promise((resolve) => {
        ws.on('message', () => {
          count++
          if (Date.now() < end) ws.send(MESSAGE)
          else resolve()
        })
        ws.send(MESSAGE)
      })
      ws.close()
    }),
  )
  return count / seconds
}

const unaryMethod = {
  path: '/bench.Echo/Unary',
  requestStream: false,
  responseStream: false,
  requestSerialize: (b) => b,
  requestDeserialize: (b) => b,
  responseSerialize: (b) => b,
  responseDeserialize: (b) => b,
}

/** Calls per second over `seconds`, CLIENTS callers each calling back to back on one channel. */
async function grpcLoad(address, seconds) {
  const Client = grpc.makeGenericClientConstructor({ unary: unaryMethod }, 'Echo')
  const client = new Client(address, grpc.credentials.createInsecure())
  const end = Date.now() + seconds * 1000
  let count = 0
  let errors = 0
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (Date.now() < end) {
        await new Promise((resolve) => client.unary(MESSAGE, (err) => resolve(err ? errors++ : count++)))
      }
    }),
  )
  client.close()
  return { perSecond: count / seconds, errors }
}

/** Both rows: direct and through the sidecar, for WebSocket and gRPC. */
export async function measureProtocols({ seconds = 5 } = {}) {
  const children = []
  const tmp = mkdtempSync(join(os.tmpdir(), 'sidecar-bench-protocols-'))
  try {
    const [wsPort, grpcPort] = [await freePort(), await freePort()]
    await startNode(children, join(root, 'bench/servers/ws-echo.mjs'), [String(wsPort)])
    await startNode(children, join(root, 'bench/servers/grpc-echo.mjs'), [String(grpcPort)])
    // the ws server answers a plain GET with 426 Upgrade Required: that is its health
    const wsSidecar = await startSidecar(children, tmp, 'ws', { name: 'app', url: `http://127.0.0.1:${wsPort}`, healthCheck: { expectedStatuses: [426] } })
    const grpcSidecar = await startSidecar(children, tmp, 'grpc', {
      name: 'app',
      url: `http://127.0.0.1:${grpcPort}`,
      protocol: 'h2c',
      healthCheck: { grpc: { service: '' } },
    })
    const [wsFloorPort, grpcFloorPort] = [await freePort(), await freePort()]
    const wsFloor = await startNode(children, join(root, 'bench/servers/ws-floor.mjs'), [String(wsFloorPort), `http://127.0.0.1:${wsPort}`])
    const grpcFloor = await startNode(children, join(root, 'bench/servers/grpc-floor.mjs'), [String(grpcFloorPort), `http://127.0.0.1:${grpcPort}`])
    for (const port of [wsSidecar.port, wsFloorPort]) await wsLoad(`ws://127.0.0.1:${port}/`, 1) // warm-up
    for (const port of [grpcSidecar.port, grpcFloorPort]) await grpcLoad(`127.0.0.1:${port}`, 1)

    /** Per second through `port`, and the CPU per message or call of `pid`. */
    const through = async (load, address, pid) => {
      const cpu = cpuSeconds(pid)
      const r = await load(address, seconds)
      const perSecond = typeof r === 'number' ? r : r.perSecond
      return { perSecond, errors: r.errors ?? 0, cpuUs: ((cpuSeconds(pid) - cpu) / (perSecond * seconds)) * 1e6 }
    }
    const wsDirect = await wsLoad(`ws://127.0.0.1:${wsPort}/`, seconds)
    const wsProxied = await through(wsLoad, `ws://127.0.0.1:${wsSidecar.port}/`, wsSidecar.pid)
    const wsFloored = await through(wsLoad, `ws://127.0.0.1:${wsFloorPort}/`, wsFloor.pid)
    const grpcDirect = await grpcLoad(`127.0.0.1:${grpcPort}`, seconds)
    const grpcProxied = await through(grpcLoad, `127.0.0.1:${grpcSidecar.port}`, grpcSidecar.pid)
    const grpcFloored = await through(grpcLoad, `127.0.0.1:${grpcFloorPort}`, grpcFloor.pid)
    const row = (direct, proxied, floor) => ({
      direct,
      sidecar: proxied.perSecond,
      floor: floor.perSecond,
      ratio: proxied.perSecond / direct,
      cpuUs: proxied.cpuUs,
      floorCpuUs: floor.cpuUs,
      cpuRatio: proxied.cpuUs / floor.cpuUs,
      errors: proxied.errors + floor.errors,
    })
    return { clients: CLIENTS, seconds, websocket: row(wsDirect, wsProxied, wsFloored), grpcUnary: row(grpcDirect.perSecond, grpcProxied, grpcFloored) }
  } finally {
    for (const c of children) c.kill('SIGKILL')
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { seconds: { type: 'string' } } })
  const p = await measureProtocols({ seconds: Number(values.seconds ?? 5) })
  console.log(renderProtocols(p))
}
