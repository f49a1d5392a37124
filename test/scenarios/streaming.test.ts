// Streams and trailers through the real proxy: Server-Sent Events arrive as the app writes them,
// and response trailers reach the clients that take them (HTTP/1.1 with TE: trailers, HTTP/2).
import http from 'node:http'
import http2 from 'node:http2'
import t, { type Test } from 'tap'
import { startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'

const { ca, server } = devCerts()

/** An app whose /trailers answers chunked with a checksum trailer, and /events sends 5 events 150 ms apart. */
async function app(t: Test) {
  const up = await fakeUpstream()
    .route('/trailers', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum', 'x-te-seen': String(req.headers.te) })
      res.write('hello ')
      res.write('world')
      res.addTrailers({ 'x-checksum': 'sha256:abc', 'grpc-status': '0' })
      res.end()
    })
    .route('/events', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      let n = 0
      const tick = setInterval(() => {
        res.write(`data: event ${++n}\n\n`)
        if (n === 5) {
          clearInterval(tick)
          res.end()
        }
      }, 150)
      res.on('close', () => clearInterval(tick))
    })
    .listen()
  t.teardown(() => up.close())
  return up
}

function h1(port: number, path: string, headers: http.OutgoingHttpHeaders = {}) {
  return new Promise<{ headers: http.IncomingHttpHeaders; trailers: NodeJS.Dict<string>; body: string; arrivals: number[] }>((resolve, reject) => {
    const started = Date.now()
    http
      .get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
        let body = ''
        const arrivals: number[] = []
        res.on('data', (c: Buffer) => {
          body += c.toString()
          arrivals.push(Date.now() - started)
        })
        res.on('end', () => resolve({ headers: res.headers, trailers: res.trailers, body, arrivals }))
      })
      .on('error', reject)
  })
}

t.test('response trailers: to an HTTP/1.1 client that sent TE: trailers, and not to one that did not', async (t) => {
  const up = await app(t)
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  const asked = await h1(proxy.port, '/trailers', { te: 'trailers' })
  t.equal(asked.body, 'hello world')
  t.same(asked.trailers, { 'x-checksum': 'sha256:abc', 'grpc-status': '0' }, 'the trailers, after the body')
  t.equal(asked.headers.trailer, 'x-checksum', 'announced by Trailer')
  t.equal(asked.headers['x-te-seen'], 'trailers', 'the app was told the client takes trailers')
  const plain = await h1(proxy.port, '/trailers')
  t.equal(plain.body, 'hello world', 'the body whole')
  t.same(plain.trailers, {}, 'no trailers for a client that did not ask')
  t.equal(plain.headers['x-te-seen'], 'undefined')
})

t.test('response trailers reach an HTTP/2 client', async (t) => {
  const up = await app(t)
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const proxy = await startProxy(up.url, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  t.teardown(() => proxy.close())
  const session = http2.connect(`https://127.0.0.1:${proxy.port}`, { ca: ca.cert, servername: 'localhost' })
  t.teardown(() => session.destroy())
  const result = await new Promise<{ body: string; trailers: http2.IncomingHttpHeaders }>((resolve, reject) => {
    const stream = session.request({ ':path': '/trailers', te: 'trailers' })
    let body = ''
    let trailers: http2.IncomingHttpHeaders = {}
    stream.on('data', (c: Buffer) => (body += c.toString()))
    stream.on('trailers', (h) => (trailers = h))
    stream.on('end', () => resolve({ body, trailers }))
    stream.on('error', reject)
  })
  t.equal(result.body, 'hello world')
  t.match(result.trailers, { 'x-checksum': 'sha256:abc', 'grpc-status': '0' })
})

t.test('Server-Sent Events reach the client event by event, as the app writes them', async (t) => {
  const up = await app(t)
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  const direct = await h1(up.port, '/events')
  const proxied = await h1(proxy.port, '/events')
  t.equal(proxied.body, direct.body, 'the same five events')
  t.equal(proxied.arrivals.length, 5, 'in five reads: nothing was held back to be sent together')
  const gaps = (a: number[]) => a.slice(1).map((x, i) => x - a[i]!)
  for (const gap of gaps(proxied.arrivals)) t.ok(gap >= 100, `${gap} ms between events at the client (150 ms at the app)`)
  t.comment(`gaps direct ${gaps(direct.arrivals).join(', ')} ms; through the proxy ${gaps(proxied.arrivals).join(', ')} ms`)
})
