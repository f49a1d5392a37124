// Every response the proxy makes up, whoever makes it (Node's parser, the listener, a layer), is
// the same local reply: x-sidecar-error, x-request-id, cache-control: no-store; gRPC-shaped when
// the request is gRPC.
import http2 from 'node:http2'
import t from 'tap'
import { raw, request } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

const header = (reply: string, name: string) => new RegExp(`\\r\\n${name}: ([^\\r]+)\\r\\n`, 'i').exec(reply)?.[1]

t.test('HTTP/1: the parser, the listener and the layers answer alike', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url, { limits: { maxBodyBytes: 10 } })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  const H = 'Host: app.local\r\nConnection: close\r\n'
  const cases: Array<[string, string, number, string]> = [
    ['refused by the parser', 'GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n', 400, 'bad_request'],
    ['header block over the cap (parser)', `GET / HTTP/1.1\r\n${H}X-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
    ['refused by the listener', `GET / HTTP/1.1\r\n${H}Host: other\r\n\r\n`, 400, 'bad_request'],
    ['CONNECT, on the raw socket', 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nX-Request-Id: mine-1\r\n\r\n', 405, 'method_not_allowed'],
    ['refused by a layer', `POST / HTTP/1.1\r\n${H}Content-Length: 11\r\nX-Request-Id: mine-2\r\n\r\nhello world`, 413, 'body_too_large'],
  ]
  for (const [what, bytes, status, code] of cases) {
    const reply = await raw(proxy.port, bytes)
    t.equal(Number(/^HTTP\/1\.1 (\d+)/.exec(reply)?.[1]), status, `${what}: ${status}`)
    t.equal(header(reply, 'x-sidecar-error'), code, `${what}: x-sidecar-error`)
    t.match(header(reply, 'x-request-id'), /^[\x21-\x7e]{1,128}$/, `${what}: x-request-id`)
    t.equal(header(reply, 'cache-control'), 'no-store', `${what}: cache-control`)
    const id = header(reply, 'x-request-id')
    t.match(JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)), { error: code, requestId: id }, `${what}: the body names the same request`)
  }
  t.equal(header(await raw(proxy.port, cases[3]![1]), 'x-request-id'), 'mine-1', "a client's own x-request-id is kept on refusals too")
  t.equal(up.seen.length, 0, 'none of them reached the app')
})

t.test('HTTP/2: a refusal and a layer error carry the same headers; a gRPC request gets a gRPC answer', async (t) => {
  const { ca, server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const proxy = await startProxy(`http://127.0.0.1:${await freePort()}`, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  t.teardown(() => proxy.close())
  const session = http2.connect(`https://127.0.0.1:${proxy.port}`, { ca: ca.cert, servername: 'localhost' })
  t.teardown(() => session.destroy())
  const exchange = (headers: http2.OutgoingHttpHeaders) =>
    new Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const stream = session.request(headers)
      let received: http2.IncomingHttpHeaders = {}
      let trailers: http2.IncomingHttpHeaders = {}
      let body = ''
      stream.on('response', (h) => (received = h))
      stream.on('trailers', (h) => (trailers = h))
      stream.on('data', (c: Buffer) => (body += c.toString()))
      stream.on('end', () => resolve({ headers: received, trailers, body }))
      stream.on('error', reject)
      stream.end()
    })

  const refused = await exchange({ ':path': '/', ':authority': 'app.local', host: 'evil' })
  t.equal(refused.headers[':status'], 400)
  t.match(refused.headers, { 'x-sidecar-error': 'bad_request', 'x-request-id': /./, 'cache-control': 'no-store' })
  const down = await exchange({ ':path': '/', 'x-request-id': 'h2-down' })
  t.equal(down.headers[':status'], 503, 'the app is down')
  t.match(down.headers, { 'x-sidecar-error': 'upstream_unhealthy', 'x-request-id': 'h2-down', 'cache-control': 'no-store' })

  const grpc = await exchange({ ':method': 'POST', ':path': '/shop.Cart/Add', 'content-type': 'application/grpc', te: 'trailers' })
  t.equal(grpc.headers[':status'], 200, 'gRPC answers are HTTP 200...')
  t.equal(grpc.headers['content-type'], 'application/grpc')
  t.equal(grpc.headers['grpc-status'], '14', '...with grpc-status UNAVAILABLE for a backend that is down')
  t.match(decodeURIComponent(grpc.headers['grpc-message'] as string), /fails its health checks/)
  t.equal(grpc.headers['x-sidecar-error'], 'upstream_unhealthy')
  t.equal(grpc.body, '', 'and no body: a trailers-only response')
  t.ok((await request(`${proxy.adminUrl}/ready`)).status === 503, 'the proxy knows the app is down')
})
