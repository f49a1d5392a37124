// HTTP/2 clients: aborts, limits, upstream failures and graceful stop, per stream.
import http2 from 'node:http2'
import t, { type Test } from 'tap'
import { until, within } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'
import { devCerts } from '../fixtures/tls.js'

const { ca, server } = devCerts()

async function h2Proxy(t: Test, config: Record<string, unknown> = {}) {
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const releases: Array<() => void> = []
  const setup = await proxied(
    t,
    fakeUpstream()
      .route('/hang', () => {})
      .route('/slow', (_req, res) => releases.push(() => res.end('finished')))
      .route('/cut-body', (_req, res) => {
        res.writeHead(200, { 'content-length': 1000 })
        res.write('x'.repeat(10))
        setTimeout(() => res.socket?.destroy(), 20)
      }),
    { ...config, listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } },
  )
  const session = http2.connect(`https://127.0.0.1:${setup.proxy.port}`, { ca: ca.cert, servername: 'localhost' })
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  return { ...setup, session, releases }
}

interface StreamResult {
  status?: number
  headers?: http2.IncomingHttpHeaders
  body: string
  error?: string
  rstCode?: number
}

function exchange(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Buffer): Promise<StreamResult> {
  return new Promise((resolve) => {
    const stream = session.request(headers)
    const result: StreamResult = { body: '' }
    stream.on('response', (h) => {
      result.headers = h
      result.status = h[':status']
    })
    stream.on('data', (c: Buffer) => (result.body += c.toString()))
    stream.on('error', (err) => (result.error = (err as NodeJS.ErrnoException).code))
    stream.on('close', () => {
      result.rstCode = stream.rstCode
      resolve(result)
    })
    stream.end(body)
  })
}

t.test('an HTTP/2 stream reset by the client cancels its upstream request', async (t) => {
  const { up, session, proxy } = await h2Proxy(t)
  const stream = session.request({ ':path': '/hang' })
  stream.on('error', () => {})
  await until(() => up.seen.length === 1)
  stream.close(http2.constants.NGHTTP2_CANCEL)
  const closed = await Promise.race([up.seen[0]!.closed.then(() => true), new Promise((r) => setTimeout(() => r(false), 1000))])
  t.ok(closed, 'the app saw the close within a second')
  await until(() => proxy.logs.some((l) => l.path === '/hang'))
  t.match(proxy.logs.find((l) => l.path === '/hang'), { status: 499, error: 'client_closed' })
})

t.test('the header-count and body limits apply to HTTP/2 requests', async (t) => {
  const { up, session } = await h2Proxy(t, { limits: { maxHeaderCount: 10, maxBodyBytes: 100 } })
  const many = Object.fromEntries(Array.from({ length: 11 }, (_, i) => [`x-h${i}`, 'v']))
  const tooMany = await exchange(session, { ':path': '/many', ...many })
  t.equal(tooMany.status, 431)
  t.equal(tooMany.headers?.['x-sidecar-error'], 'headers_too_large')
  const ten = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`x-h${i}`, 'v']))
  t.equal((await exchange(session, { ':path': '/ten', ...ten })).status, 200, 'pseudo-headers do not count against the cap')
  const big = await exchange(session, { ':method': 'POST', ':path': '/big', 'content-length': '101' }, Buffer.alloc(101))
  t.equal(big.status, 413)
  const undeclared = await exchange(session, { ':method': 'POST', ':path': '/undeclared' }, Buffer.alloc(101))
  t.equal(undeclared.status, 413, 'a body without content-length is counted')
  t.equal(up.seen.filter((s) => s.url === '/big').length, 0)
})

t.test('an upstream dying mid-body resets the HTTP/2 stream; the connection lives on', async (t) => {
  const { session } = await h2Proxy(t)
  const cut = await exchange(session, { ':path': '/cut-body' })
  t.equal(cut.status, 200)
  t.not(cut.rstCode, http2.constants.NGHTTP2_NO_ERROR, `the stream was reset (code ${cut.rstCode}), not ended cleanly`)
  t.equal(cut.body.length, 10)
  t.equal((await exchange(session, { ':path': '/after' })).status, 200, 'other streams on the same connection still work')
})

t.test('graceful stop: HTTP/2 gets GOAWAY, open streams finish, new connections are refused', async (t) => {
  const { session, releases, proxy } = await h2Proxy(t)
  const goaway = new Promise<void>((resolve) => session.once('goaway', () => resolve()))
  const inFlight = exchange(session, { ':path': '/slow' })
  await until(() => releases.length === 1)
  const stopped = proxy.close()
  await within(goaway, 2000, 'GOAWAY')
  t.pass('the client got GOAWAY')
  const fresh = http2.connect(`https://127.0.0.1:${proxy.port}`, { ca: ca.cert, servername: 'localhost' })
  const refused = await within(new Promise<string>((resolve) => fresh.once('error', (err: NodeJS.ErrnoException) => resolve(err.code!))), 2000, 'a new connection')
  t.equal(refused, 'ECONNREFUSED', 'a new connection is refused')
  releases[0]!()
  const result = await inFlight
  t.equal(result.status, 200)
  t.equal(result.body, 'finished')
  t.equal(await stopped, 0)
})


t.test('HTTP/2: HEAD, 204 and 304 end their stream with the headers, as RFC 9110 wants, whatever the app wrote', async (t) => {
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const { proxy } = await proxied(
    t,
    fakeUpstream()
      .route('/page', (_req, res) => res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 11 }).end('hello world'))
      .route('/none', (_req, res) => res.writeHead(204, { 'x-app': 'yes' }).end())
      .route('/same', (_req, res) => res.writeHead(304, { etag: '"v1"' }).end()),
    { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } },
  )
  const session = http2.connect(`https://127.0.0.1:${proxy.port}`, { ca: ca.cert, servername: 'localhost' })
  t.teardown(() => session.destroy())
  const head = await exchange(session, { ':method': 'HEAD', ':path': '/page' })
  t.match(head, { status: 200, body: '', rstCode: http2.constants.NGHTTP2_NO_ERROR }, 'HEAD: no body, the stream ended cleanly')
  t.equal(head.headers?.['content-length'], '11', "HEAD: the length of what GET would send, as the app said")
  t.match(await exchange(session, { ':path': '/none' }), { status: 204, body: '', rstCode: http2.constants.NGHTTP2_NO_ERROR, headers: { 'x-app': 'yes' } })
  t.match(await exchange(session, { ':path': '/same' }), { status: 304, body: '', rstCode: http2.constants.NGHTTP2_NO_ERROR, headers: { etag: '"v1"' } })
  t.equal((await exchange(session, { ':path': '/page' })).body, 'hello world', 'GET: the body')
})

t.test('HTTP/2 Expect: 100-continue: a 100 when the body is wanted, then the body forwarded whole', async (t) => {
  const { session } = await h2Proxy(t)
  const body = Buffer.alloc(100_000, 'b')
  const result = await new Promise<{ continued: boolean; status?: number; text: string }>((resolve) => {
    const stream = session.request({ ':method': 'POST', ':path': '/upload', expect: '100-continue', 'content-length': body.length })
    const out = { continued: false, status: undefined as number | undefined, text: '' }
    // the body only once the proxy asks for it, as curl and Node's clients do
    stream.on('continue', () => {
      out.continued = true
      stream.end(body)
    })
    stream.on('response', (h) => (out.status = h[':status']))
    stream.on('data', (c: Buffer) => (out.text += c.toString()))
    stream.on('close', () => resolve(out))
  })
  t.ok(result.continued, 'the client was told to go on')
  t.equal(result.status, 200)
  t.equal(JSON.parse(result.text).bodyBytes, body.length, 'the app got the whole body')
})

t.test('HTTP/2 CONNECT is refused with 405 on its stream; the session lives on', async (t) => {
  const { up, session } = await h2Proxy(t)
  const stream = session.request({ ':method': 'CONNECT', ':authority': 'evil.example:443' })
  const reply = await new Promise<StreamResult>((resolve) => {
    const result: StreamResult = { body: '' }
    stream.on('response', (h) => ((result.headers = h), (result.status = h[':status'])))
    stream.on('data', (c: Buffer) => (result.body += c.toString()))
    stream.on('error', () => {})
    stream.on('close', () => resolve(result))
  })
  t.equal(reply.status, 405)
  t.equal(reply.headers?.['x-sidecar-error'], 'method_not_allowed')
  t.match(JSON.parse(reply.body), { error: 'method_not_allowed' })
  t.equal(up.seen.length, 0, 'the app received nothing')
  t.equal((await exchange(session, { ':path': '/after' })).status, 200, 'the same session still serves')
})

t.test('HTTP/2 requests the HTTP/1 rules refuse are refused the same way: forwarded 0 of 6', async (t) => {
  const { up, session } = await h2Proxy(t)
  const refused: http2.OutgoingHttpHeaders[] = [
    { ':path': '/a', ':authority': 'user@evil.example' },
    { ':path': '/a', ':authority': 'evil!.example' },
    { ':path': '/a', ':authority': 'app.example', host: 'evil.example' },
    { ':path': '*', ':method': 'OPTIONS' },
    { ':path': '/a', ':method': 'get' },
    { ':path': '/a', ':method': 'FROB' },
  ]
  for (const headers of refused) {
    const reply = await exchange(session, headers)
    // The nghttp2 of Node 22 and later refuses userinfo in :authority itself (the stream is
    // reset before any handler sees it); Node 20's passes it on, and the proxy answers 400.
    if (String(headers[':authority']).includes('@') && reply.status === undefined) {
      t.equal(reply.rstCode, http2.constants.NGHTTP2_PROTOCOL_ERROR, `${JSON.stringify(headers)}: reset by nghttp2`)
      continue
    }
    t.equal(reply.status, 400, JSON.stringify(headers))
    t.equal(reply.headers?.['x-sidecar-error'], 'bad_request')
  }
  t.equal(up.seen.length, 0, 'forwarded to the app: 0 of 6')
  const same = await exchange(session, { ':path': '/ok', ':authority': 'localhost', host: 'LOCALHOST' })
  t.equal(same.status, 200, 'a Host naming the same authority passes, and the session still serves')
})

t.test('rapid reset: 5 rounds of 100 streams cancelled once at the app leave nothing open behind', async (t) => {
  // 500 resets on one connection: within the limit here (what is over it: test/scenarios/abuse.test.ts)
  const { up, proxy, session } = await h2Proxy(t, { limits: { maxStreamResetsPer10s: 1000 } })
  const rounds = 5
  const perRound = 100 // listener.maxConcurrentStreams
  for (let round = 1; round <= rounds; round++) {
    const streams = Array.from({ length: perRound }, () => session.request({ ':path': '/hang' }).on('error', () => {}))
    await until(() => up.seen.length === round * perRound)
    const closed = streams.map((s) => new Promise<void>((resolve) => s.on('close', () => resolve())))
    for (const s of streams) s.close(http2.constants.NGHTTP2_CANCEL)
    await Promise.all(closed)
  }
  const cut = await Promise.race([Promise.all(up.seen.map((s) => s.closed)).then(() => true), new Promise((r) => setTimeout(() => r(false), 3000))])
  t.ok(cut, `requests cancelled at the app: ${up.seen.length} of ${rounds * perRound}`)
  await until(() => proxy.logs.filter((l) => l.msg === 'request').length === rounds * perRound)
  t.equal(proxy.app.status().backends[0]!.inFlight.active, 0, 'attempts in flight: 0')
  t.equal((await exchange(session, { ':path': '/after' })).status, 200, 'and the same session is served')
})
