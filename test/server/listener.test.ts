// The listener on its own, with a handler written by the test: the seams between Node's
// server objects and the pipeline.
import http from 'node:http'
import net, { type Socket } from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { systemClock } from '../../src/clock.js'
import { Listener } from '../../src/server/listener.js'
import { within } from '../fixtures/client.js'
import { LISTENER_OPTIONS, deps, fromAsync, type AsyncHandler } from '../fixtures/pipeline.js'


async function start(t: Test, handler: AsyncHandler) {
  const d = deps()
  const listener = new Listener(LISTENER_OPTIONS, fromAsync(handler), { ...d, clock: systemClock })
  const { port } = await listener.listen()
  t.teardown(() => listener.close(1000))
  return { port, d, listener }
}

t.test('a response ready only after the client left is released without crashing the process', async (t) => {
  let destroyed!: () => void
  const bodyDestroyed = new Promise<void>((resolve) => (destroyed = resolve))
  const { port } = await start(t, async (_req, ctx) => {
    await new Promise((resolve) => ctx.signal.onAbort(resolve))
    const body = new Readable({
      read() {},
      destroy(_err, cb) {
        destroyed()
        cb(new Error('destroyed while nobody listened')) // emits 'error' on the body
      },
    })
    return { status: 200, headers: {}, body }
  })
  const req = http.get(`http://127.0.0.1:${port}/`, { agent: false })
  req.on('error', () => {})
  setTimeout(() => req.destroy(), 50)
  await within(bodyDestroyed, 2000, 'the body released')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.pass('the process is still here')
})

t.test('a handler that fails (a bug) cuts the connection and is logged, never a hang', async (t) => {
  const { port, d } = await start(t, async () => {
    throw new Error('bug')
  })
  const outcome = await new Promise<string>((resolve) => {
    http.get(`http://127.0.0.1:${port}/`, { agent: false }, () => resolve('response')).on('error', (err) => resolve((err as NodeJS.ErrnoException).code ?? 'error'))
  })
  t.equal(outcome, 'ECONNRESET')
  t.match(d.lines, [{ level: 'error', msg: 'pipeline failed', err: { message: 'bug' } }])
})

t.test('a failing end hook is logged and does not affect the response', async (t) => {
  const { port, d } = await start(t, async (_req, ctx) => {
    ctx.onEnd.push(() => {
      throw new Error('hook bug')
    })
    return { status: 204, headers: {}, body: null }
  })
  const status = await new Promise<number>((resolve) => http.get(`http://127.0.0.1:${port}/`, { agent: false }, (res) => resolve(res.statusCode!)))
  t.equal(status, 204)
  for (let i = 0; i < 50 && d.lines.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.match(d.lines, [{ level: 'error', msg: 'request end hook failed' }])
})

t.test('a server error after bind (an accept failing) is logged, never an unhandled crash', async (t) => {
  const { d, listener } = await start(t, async () => ({ status: 200, headers: {}, body: null }))
  listener.server.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE' }))
  t.match(d.lines.at(-1), { level: 'warn', msg: 'listener error', err: { code: 'EMFILE', message: 'accept EMFILE' } })
})

t.test('a keep-alive connection holds what a bare Node server\'s holds and two close listeners: nothing of the preface sniffing, whose closure held the first bytes read', async (t) => {
  /** The server side of one keep-alive connection after one request on it: its listeners by event. */
  const listenersAfterOneRequest = async (server: net.Server, port: number) => {
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve))
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    t.teardown(() => agent.destroy())
    const body = 'x'.repeat(2000) // a first read the size of a form post
    const status = await new Promise<number>((resolve, reject) => {
      http.request(`http://127.0.0.1:${port}/`, { method: 'POST', agent }, (res) => res.resume().on('end', () => resolve(res.statusCode!))).on('error', reject).end(body)
    })
    t.equal(status, 204)
    const socket = await accepted
    await new Promise((resolve) => setImmediate(resolve))
    return new Map(socket.eventNames().map((name) => [String(name), socket.listenerCount(name)]))
  }
  const { listener, port } = await start(t, async (req) => {
    for await (const _ of req.body as Readable);
    return { status: 204, headers: {}, body: null }
  })
  const ours = await listenersAfterOneRequest(listener.server, port)
  const bare = http.createServer((req, res) => req.resume().on('end', () => res.writeHead(204).end()))
  await new Promise<void>((resolve) => bare.listen(0, '127.0.0.1', resolve))
  t.teardown(() => bare.close())
  const theirs = await listenersAfterOneRequest(bare, (bare.address() as net.AddressInfo).port)
  theirs.set('close', (theirs.get('close') ?? 0) + 2) // the connection's own, and its HTTP/1 state's
  t.same(Object.fromEntries(ours), Object.fromEntries(theirs))
})
