// Bodies and streaming through the real proxy: byte-exact both ways, never buffered whole.
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import http2 from 'node:http2'
import net from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { request as undiciRequest } from 'undici'
import { json, metric, request } from '../fixtures/client.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream, pseudoRandomChunks, sha256Of, type Echo } from '../fixtures/upstream.js'

const MiB = 1024 * 1024

t.test('request bodies arrive byte-exact: 0 B, 1 MiB and 50 MiB, for GET/POST/PUT', async (t) => {
  // The 50 MiB bodies are made and hashed on the proxy's own event loop: on a busy machine the
  // load shedder (limits.maxEventLoopDelayMs) would refuse the next request, which is not what
  // this test is about.
  const { proxy } = await proxied(t, fakeUpstream(), { limits: { maxEventLoopDelayMs: 0 } })
  for (const [method, size] of [['GET', 0], ['POST', 0], ['POST', MiB], ['PUT', MiB], ['PUT', 50 * MiB], ['POST', 50 * MiB]] as const) {
    const body = size === 0 ? undefined : Readable.from(pseudoRandomChunks(size))
    const { reply, body: echoed } = await json<Echo>(`${proxy.url}/upload`, {
      method,
      headers: size === 0 ? {} : { 'content-length': size },
      body,
    })
    t.equal(reply.status, 200, `${method} ${size}`)
    t.equal(echoed.bodyBytes, size, `${method} ${size}: length`)
    t.equal(echoed.sha256, sha256Of(pseudoRandomChunks(size)), `${method} ${size}: sha256`)
    t.equal(echoed.headers['content-length'], size === 0 && method === 'GET' ? undefined : String(size))
  }
})

t.test('a chunked upload is forwarded chunked and byte-exact', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  const size = 3 * MiB + 17
  const { reply, body } = await json<Echo>(`${proxy.url}/chunked`, {
    method: 'POST',
    body: Readable.from(pseudoRandomChunks(size, 10_000)), // no content-length: node sends chunked
  })
  t.equal(reply.status, 200)
  t.equal(body.headers['transfer-encoding'], 'chunked')
  t.equal(body.bodyBytes, size)
  t.equal(body.sha256, sha256Of(pseudoRandomChunks(size, 10_000)))
})

t.test('response bodies arrive byte-exact, 50 MiB streamed', async (t) => {
  const size = 50 * MiB
  const { proxy } = await proxied(t, fakeUpstream()
    .route('/download', (_req, res) => {
      res.writeHead(200, { 'content-length': size })
      Readable.from(pseudoRandomChunks(size)).pipe(res)
    })
    )
  const res = await undiciRequest(`${proxy.url}/download`)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-length'], String(size))
  const hash = (await import('node:crypto')).createHash('sha256')
  let n = 0
  for await (const chunk of res.body) {
    n += chunk.length
    hash.update(chunk)
  }
  t.equal(n, size)
  t.equal(hash.digest('hex'), sha256Of(pseudoRandomChunks(size)))
  t.ok(process.memoryUsage().rss < 1024 * MiB, 'no whole-body buffering blew up memory')
})

t.test('a streaming response reaches the client before the upstream has finished', async (t) => {
  let finish!: () => void
  const finished = new Promise<void>((resolve) => (finish = resolve))
  const { proxy } = await proxied(t, fakeUpstream()
    .route('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('first chunk\n')
      void finished.then(() => res.end('last chunk\n'))
    })
    )
  const res = await undiciRequest(`${proxy.url}/stream`)
  const it = res.body[Symbol.asyncIterator]()
  const first = await it.next()
  t.equal(String(first.value), 'first chunk\n', 'first chunk arrived while the upstream still holds the response open')
  finish()
  let rest = ''
  for (let r = await it.next(); !r.done; r = await it.next()) rest += String(r.value)
  t.equal(rest, 'last chunk\n')
})

t.test('status, headers and query pass through untouched', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream()
    .route('/created', (_req, res) => {
      res.setHeader('set-cookie', ['a=1', 'b=2'])
      res.writeHead(201, { location: '/things/1', 'x-app': 'yes' }).end('made')
    })
    )
  const reply = await request(`${proxy.url}/created?q=%20a&b=2`, { method: 'POST', body: 'x' })
  t.equal(reply.status, 201)
  t.equal(reply.headers.location, '/things/1')
  t.equal(reply.headers['x-app'], 'yes')
  t.same(reply.headers['set-cookie'], ['a=1', 'b=2'])
  t.equal(reply.body.toString(), 'made')
  t.equal(up.seen[0]?.url, '/created?q=%20a&b=2')
  const head = await request(`${proxy.url}/anything`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.body.length, 0)
})

/** An app written as raw bytes, one canned answer per path, the connection kept open. */
async function rawApp(t: Test, answers: Record<string, string>) {
  const server = net.createServer((socket) => {
    let head = ''
    socket.on('data', (c: Buffer) => {
      head += c.toString('latin1')
      for (let end = head.indexOf('\r\n\r\n'); end >= 0; end = head.indexOf('\r\n\r\n')) {
        const path = head.split(' ')[1]!
        head = head.slice(end + 4)
        socket.write(answers[path] ?? 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
      }
    })
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
}

t.test('answers that have no body are relayed with their headers, whatever Content-Length says', async (t) => {
  const app = await rawApp(t, {
    // RFC 9110 8.6: a 304 may carry the Content-Length of the representation it stands for
    '/not-modified': 'HTTP/1.1 304 Not Modified\r\netag: "v5"\r\ncontent-length: 5\r\n\r\n',
    '/stray': 'HTTP/1.1 204 No Content\r\nx-app: yes\r\ncontent-length: 5\r\n\r\nhello',
    '/head': 'HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: "big"\r\n\r\n',
  })
  const { ca, server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const proxy = await startProxy(app, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  t.teardown(() => proxy.close())
  const curl = (...args: string[]) =>
    new Promise<{ code: number; out: string }>((resolve) => {
      execFile('curl', ['-sS', '-i', '--http1.1', '--cacert', `${dir}/ca.crt`, '--max-time', '5', ...args], (err, out) => resolve({ code: err ? Number(err.code) : 0, out }))
    })
  writeFileSync(`${dir}/ca.crt`, ca.cert)
  const base = `https://localhost:${proxy.port}`

  const notModified = await curl('-H', 'x-request-id: nm', `${base}/not-modified`)
  t.equal(notModified.code, 0, 'curl: no "empty reply" (exit 52)')
  t.match(notModified.out, /^HTTP\/1\.1 304 /)
  t.match(notModified.out, /\r\netag: "v5"\r\n/i)
  t.match(await proxy.accessLine('nm'), { status: 304 }, 'logged as the 304 it was')
  t.notOk('error' in (await proxy.accessLine('nm')), 'not upstream_bad_response')

  const stray = await curl('-H', 'x-request-id: st', `${base}/stray`)
  t.equal(stray.code, 0)
  t.match(stray.out, /^HTTP\/1\.1 204 /)
  t.match(stray.out, /\r\nx-app: yes\r\n/i, 'the 204 passes, as nginx passes it')
  t.notMatch(stray.out, /hello/, 'and the stray bytes do not')

  const head = await curl('-I', '-H', 'x-request-id: hd', `${base}/head`)
  t.equal(head.code, 0)
  t.match(head.out, /^HTTP\/1\.1 200 [^]*\r\ncontent-length: 1000\r\n/i, 'HEAD: the length of what GET would send')

  // HTTP/2: the client got its 304 before too, but the access line said 499 client_closed
  const session = http2.connect(base, { ca: ca.cert })
  t.teardown(() => session.destroy())
  const status = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':path': '/not-modified', 'x-request-id': 'h2nm' })
    stream.on('response', (h) => resolve(h[':status']!))
    stream.on('error', reject)
    stream.resume()
  })
  t.equal(status, 304)
  const line = await proxy.accessLine('h2nm')
  t.match(line, { status: 304 })
  t.notOk('error' in line || 'incomplete' in line, 'complete, no client_closed')
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200, 'and the app is still healthy')
})

t.test('the connections held to the app are counted: one a request in flight, kept for reuse, closed when idle', async (t) => {
  const release: Array<() => void> = []
  const up = await fakeUpstream()
    .route('/hold', (_req, res) => release.push(() => res.end('held')))
    .listen()
  t.teardown(() => up.close())
  const idleTimeoutMs = 1000
  const proxy = await startProxy(up.url, { backends: [{ name: 'app', url: up.url, idleTimeoutMs, healthCheck: { intervalMs: 60_000 } }] })
  t.teardown(() => proxy.close())
  const open = () => metric(proxy.adminUrl, 'sidecar_upstream_connections{backend="app"}')
  const noneOpen = async () => {
    for (let i = 0; i < 150 && (await open()) > 0; i++) await new Promise((r) => setTimeout(r, 20))
    return open()
  }
  // the first health check's connection closes once idle (the next check is a minute away)
  t.equal(await noneOpen(), 0, 'none open once the health check\'s connection is idle')
  const held = Array.from({ length: 5 }, () => request(`${proxy.url}/hold`))
  for (let i = 0; i < 200 && release.length < 5; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(await open(), 5, 'one connection a request in flight')
  release.forEach((done) => done())
  t.same((await Promise.all(held)).map((r) => r.status), [200, 200, 200, 200, 200])
  t.equal(await open(), 5, 'kept alive for the next requests')
  const ports = new Set(up.seen.filter((s) => s.url === '/hold').map((s) => s.remotePort))
  await request(`${proxy.url}/again`)
  t.ok(ports.has(up.seen.at(-1)!.remotePort), 'and reused')
  t.equal(await noneOpen(), 0, `closed after backends[].idleTimeoutMs (${idleTimeoutMs} ms) idle`)
})
