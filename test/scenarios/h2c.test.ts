// HTTP/2 in the clear on the plain listener (h2c with prior knowledge, what gRPC clients use
// inside a cluster), next to HTTP/1.1 on the same port: Node's http2 client and curl.
import { execFile } from 'node:child_process'
import http2 from 'node:http2'
import net from 'node:net'
import t, { type Test } from 'tap'
import { request, until, within } from '../fixtures/client.js'
import { get, rawSession } from '../fixtures/h2-frames.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream, type Echo } from '../fixtures/upstream.js'

async function setup(t: Test, config: Record<string, unknown> = {}) {
  const up = await fakeUpstream()
    .route('/trailers', (_req, res) => {
      res.writeHead(200, { trailer: 'grpc-status' })
      res.write('body')
      res.addTrailers({ 'grpc-status': '0' })
      res.end()
    })
    .listen()
  const proxy = await startProxy(up.url, config)
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  return { up, proxy }
}

function h2(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string) {
  return within(
    new Promise<{ status: number; body: string; trailers: http2.IncomingHttpHeaders }>((resolve, reject) => {
      const stream = session.request(headers)
      let status = 0
      let text = ''
      let trailers: http2.IncomingHttpHeaders = {}
      stream.on('response', (h) => (status = h[':status']!))
      stream.on('data', (c: Buffer) => (text += c.toString()))
      stream.on('trailers', (h) => (trailers = h))
      stream.on('end', () => resolve({ status, body: text, trailers }))
      stream.on('error', reject)
      stream.end(body)
    }),
    5000,
    'an h2c exchange',
  )
}

t.test('h2c with prior knowledge and HTTP/1.1 on one plain port', async (t) => {
  const { up, proxy } = await setup(t)
  const session = http2.connect(`http://127.0.0.1:${proxy.port}`)
  t.teardown(() => session.destroy())
  const got = await h2(session, { ':path': '/hello', 'x-request-id': 'h2c-1' })
  t.equal(got.status, 200)
  const echo = JSON.parse(got.body) as Echo
  t.equal(echo.url, '/hello')
  t.equal(echo.headers['x-forwarded-proto'], 'http')
  t.match(await proxy.accessLine('h2c-1'), { status: 200, backend: 'app' })
  const posted = JSON.parse((await h2(session, { ':method': 'POST', ':path': '/up' }, 'x'.repeat(10_000))).body) as Echo
  t.equal(posted.bodyBytes, 10_000, 'a body, whole')
  t.match((await h2(session, { ':path': '/trailers' })).trailers, { 'grpc-status': '0' }, 'trailers')
  t.equal(session.remoteSettings.maxConcurrentStreams, 100, "the TLS listener's HTTP/2 limits: limits.maxConcurrentStreams")
  t.equal((await request(`${proxy.url}/plain`)).status, 200, 'HTTP/1.1 on the same port')
  t.equal(up.seen.length, 4)

  const curl = await new Promise<string>((resolve) => execFile('curl', ['-sS', '-i', '--http2-prior-knowledge', `${proxy.url}/curl`], (_err, out) => resolve(out)))
  t.match(curl, /^HTTP\/2 200/, 'curl --http2-prior-knowledge')
})

t.test('a plain connection that sends nothing, or half a preface, is closed after listener.headersTimeoutMs', async (t) => {
  const { proxy } = await setup(t, { listener: { headersTimeoutMs: 300, receiveTimeoutMs: 1000 } })
  for (const [what, bytes] of [['nothing', ''], ['half a preface', 'PRI * HTTP/2.0\r\n']] as const) {
    const socket = net.connect(proxy.port, '127.0.0.1')
    const started = Date.now()
    socket.on('error', () => {})
    socket.write(bytes)
    await within(new Promise((resolve) => socket.once('close', resolve)), 3000, `${what}: closed`)
    t.ok(Date.now() - started >= 250, `${what}: closed after ${Date.now() - started} ms`)
  }
})

t.test('an h2c client that closes its end of the connection cancels its requests at the app', async (t) => {
  const up = await fakeUpstream().route('/hang', () => {}).listen()
  const proxy = await startProxy(up.url)
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  const client = rawSession(proxy.port)
  client.socket.write(Buffer.concat([get(1, '/hang'), get(3, '/hang')]))
  await until(() => up.seen.length === 2)
  client.socket.end() // a FIN, as a client process exiting sends
  await within(Promise.all(up.seen.map((s) => s.closed)), 2000, 'the app\'s requests cancelled')
  await until(() => proxy.app.status().connections.open === 0)
  t.equal(proxy.app.status().backends[0]!.inFlight.active, 0, 'attempts in flight: 0')
})

t.test('a plain connection whose client goes before saying anything is closed at once, not at headersTimeoutMs', async (t) => {
  const { proxy } = await setup(t, { listener: { headersTimeoutMs: 30_000 } })
  const sockets = await Promise.all(
    Array.from({ length: 5 }, () => new Promise<net.Socket>((resolve) => {
      const s = net.connect(proxy.port, '127.0.0.1', () => resolve(s))
    })),
  )
  await until(() => proxy.app.status().connections.open === 5)
  for (const s of sockets) s.end() // a FIN, no byte
  await within(until(() => proxy.app.status().connections.open === 0), 1500, 'the half-open sockets closed')
  t.pass('each descriptor given back at once')
})
