// The TLS connection's cost guard: what the listener makes per TLS connection (the handshake and
// a first request, HTTP/1.1 and HTTP/2), counted in-process beside Node's own floor for the same
// traffic (http2.createSecureServer with allowHTTP1, the compat API answering at once): promises
// and timers created (async_hooks sees each), and the listeners left on each connection's socket
// and its TCP socket (each a closure or a bound function kept as long as it lives). The client runs in its own
// process, so that only the servers' work is counted. A count, never a time: a per-connection
// timer, promise or closure added to the path fails it. Raise a bound only with the reason in the
// commit; the benchmark (bench/tls.mjs) holds the resulting CPU per connection.
import { createHook } from 'node:async_hooks'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import http2 from 'node:http2'
import type { Socket } from 'node:net'
import type tls from 'node:tls'
import t, { type Test } from 'tap'
import { systemClock } from '../../src/clock.js'
import type { Handler } from '../../src/pipeline/types.js'
import { Listener } from '../../src/server/listener.js'
import { LISTENER_OPTIONS, deps } from '../fixtures/pipeline.js'

const cert = readFileSync(new URL('../../certs/tls.crt', import.meta.url), 'utf8')
const key = readFileSync(new URL('../../certs/tls.key', import.meta.url), 'utf8')
const CONNECTIONS = 20
/** Up to three made once for the whole run, by either server (Node's Date-header cache timer and
 *  the like): a twentieth each, where one per connection is a whole one. */
const ONCE = 3 / CONNECTIONS

/** Opens CONNECTIONS TLS connections one after the other, one request on each, keeps them. */
const CLIENT = `
const tls = require('node:tls')
const http2 = require('node:http2')
const [port, n, mode] = [Number(process.argv[1]), Number(process.argv[2]), process.argv[3]]
const kept = []
;(async () => {
  for (let i = 0; i < n; i++) {
    if (mode === 'h2') {
      const session = http2.connect('https://127.0.0.1:' + port, { rejectUnauthorized: false })
      await new Promise((resolve) => session.request({ ':path': '/' }).on('close', resolve).resume())
      kept.push(session)
    } else {
      const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
      await new Promise((resolve) => socket.on('secureConnect', () => socket.write('GET / HTTP/1.1\\r\\nhost: app\\r\\n\\r\\n')).once('data', resolve))
      kept.push(socket)
    }
  }
  process.stdout.write('done\\n')
  setTimeout(() => {}, 60000)
})()
`

interface Cost {
  promises: number
  timers: number
  immediates: number
  /** Listeners on each connection's TLS socket and its TCP socket once its request is answered. */
  listeners: number
}

/** What `server` (listening on `port`) made per connection while the client ran. */
async function perConnection(t: Test, server: tls.Server, port: number, mode: 'h1' | 'h2'): Promise<Cost> {
  const sockets: Socket[] = []
  const collect = (socket: Socket) => sockets.push(socket)
  server.on('secureConnection', collect)
  const counts = { PROMISE: 0, Timeout: 0, Immediate: 0 }
  const hook = createHook({
    init(_id, type) {
      if (type in counts) counts[type as keyof typeof counts]++
    },
  }).enable()
  const child = spawn(process.execPath, ['-e', CLIENT, String(port), String(CONNECTIONS), mode], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => void child.kill())
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('done') && resolve())
    child.once('exit', (code) => reject(new Error(`the client exited (${code})`)))
  })
  // what the last answer's end schedules
  await new Promise((resolve) => setTimeout(resolve, 50))
  hook.disable()
  server.off('secureConnection', collect)
  const count = (s: Socket | undefined): number => (s === undefined ? 0 : s.eventNames().reduce((m, e) => m + s.listenerCount(e), 0))
  // the TLS socket's and its TCP socket's
  const listeners = sockets.reduce((n, s) => n + count(s) + count((s as { _parent?: Socket })._parent), 0)
  t.equal(sockets.length, CONNECTIONS, `${mode}: every connection made`)
  // all closed before the next count, which would see their closing
  child.kill()
  await Promise.all(sockets.map((s) => new Promise((resolve) => (s.destroyed ? resolve(null) : s.once('close', resolve).destroy()))))
  await new Promise((resolve) => setTimeout(resolve, 20))
  // the harness's own wait is one timer
  return { promises: counts.PROMISE / CONNECTIONS, timers: (counts.Timeout - 1) / CONNECTIONS, immediates: counts.Immediate / CONNECTIONS, listeners: listeners / CONNECTIONS }
}

async function sidecarCost(t: Test, mode: 'h1' | 'h2'): Promise<Cost> {
  // answers at once through a Reply: no promise of its own
  const handler: Handler = (_req, _ctx, reply) => reply.ok({ status: 200, headers: {}, body: null })
  const tlsOptions = { material: { cert, key, serial: '', subject: '', notAfter: new Date(0) }, minVersion: 'TLSv1.2' as const, handshakeTimeoutMs: 5000, http2: true, requireClientCert: false }
  const listener = new Listener({ ...LISTENER_OPTIONS, tls: tlsOptions }, handler, { ...deps(), clock: systemClock })
  const { port } = await listener.listen()
  const cost = await perConnection(t, listener.server as tls.Server, port, mode)
  await listener.close(100)
  return cost
}

async function floorCost(t: Test, mode: 'h1' | 'h2'): Promise<Cost> {
  const floor = http2.createSecureServer({ cert, key, allowHTTP1: true }, (_req, res) => res.end())
  await new Promise<void>((resolve) => floor.listen(0, '127.0.0.1', resolve))
  const cost = await perConnection(t, floor, (floor.address() as { port: number }).port, mode)
  floor.close()
  return cost
}

for (const mode of ['h1', 'h2'] as const) {
  t.test(`a TLS connection (${mode === 'h1' ? 'HTTP/1.1' : 'HTTP/2'}, one request) costs what Node's own floor costs, and the limits' timers`, async (t) => {
    const floor = await floorCost(t, mode)
    const sidecar = await sidecarCost(t, mode)
    t.comment(`per connection, sidecar ${JSON.stringify(sidecar)}; Node's floor ${JSON.stringify(floor)}`)
    t.ok(sidecar.promises <= floor.promises, `no promise of its own (${sidecar.promises} against ${floor.promises})`)
    // HTTP/1.1: the keep-alive timeout (the floor's HTTP/1 fallback has none); HTTP/2: the idle
    // watch (h2-guard.ts), which closes a session as a keep-alive timeout would
    t.ok(sidecar.timers <= floor.timers + 1 + ONCE, `one timer more at most: its idle limit (${sidecar.timers} against ${floor.timers})`)
    // HTTP/2: a stream is begun on the next turn of the loop (rapid reset), and its answer ends on one
    const immediates = mode === 'h2' ? 2 : 0
    t.ok(sidecar.immediates <= floor.immediates + immediates + ONCE, `${immediates} setImmediate more at most (${sidecar.immediates} against ${floor.immediates})`)
    // the connection bookkeeping's close listeners (connections.ts), one shared function for
    // every socket: on the TCP socket, and on an HTTP/1 connection's TLS socket
    t.ok(sidecar.listeners <= floor.listeners + (mode === 'h1' ? 2 : 1), `its bookkeeping's listeners only (${sidecar.listeners} against ${floor.listeners})`)
  })
}
