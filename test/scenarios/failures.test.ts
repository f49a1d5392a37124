// What the client gets when things go wrong: the right status, x-sidecar-error from the
// catalogue, nothing half-forwarded passed off as complete, and the upstream released at once.
import net from 'node:net'
import http from 'node:http'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { metric, raw, request } from '../fixtures/client.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

async function setup(t: Test, config: Record<string, unknown> = {}) {
  const { up, proxy } = await proxied(t, fakeUpstream()
    .route('/hang', () => {}) // never answers
    .route('/reset', (req) => req.socket.destroy())
    .route('/cut-body', (_req, res) => {
      res.writeHead(200, { 'content-length': 1000 })
      res.write('x'.repeat(10))
      setTimeout(() => res.socket?.destroy(), 20)
    })
    , config)
  return { up, proxy }
}

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), ms).unref())])
}

t.test('a healthy upstream refusing connections: 502 upstream_refused', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  t.equal(proxy.app.backends().app?.healthy, true)
  await up.close() // gone, but not yet found out by the health checks (3 failures, 2 s apart)
  const reply = await request(`${proxy.url}/`)
  t.equal(reply.status, 502)
  t.equal(reply.headers['x-sidecar-error'], 'upstream_refused')
  t.match(JSON.parse(reply.body.toString()), { error: 'upstream_refused', requestId: reply.headers['x-request-id'] })
  const line = await proxy.accessLine(reply.headers['x-request-id'] as string)
  t.match(line, { status: 502, error: 'upstream_refused', backend: 'app', attempts: 2 })
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_attempts_total{backend="app",result="upstream_refused"}'), 2, 'a refused connection is retried once (default retry.attempts: 2)')
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="app",reason="refused"}'), 1)
})

t.test('upstream resetting the connection before answering: 502 upstream_reset', async (t) => {
  const { proxy } = await setup(t)
  const reply = await request(`${proxy.url}/reset`)
  t.equal(reply.status, 502)
  t.equal(reply.headers['x-sidecar-error'], 'upstream_reset')
})

t.test('upstream too slow: 504 upstream_timeout, and the upstream request is cancelled', async (t) => {
  const { up, proxy } = await setup(t, { limits: { requestTimeoutMs: 300 } })
  const reply = await request(`${proxy.url}/hang`)
  t.equal(reply.status, 504)
  t.equal(reply.headers['x-sidecar-error'], 'upstream_timeout')
  const { message } = JSON.parse(reply.body.toString()) as { message: string }
  t.equal(message.split('did not respond in time').length, 2, `the catalogue message once, then the detail: ${message}`)
  t.not(await within(up.seen[0]!.closed, 2000), 'timeout', 'the app saw its connection close')
})

t.test('upstream sending garbage: 502 upstream_bad_response', async (t) => {
  // healthy for the health check (GET /), garbage for everything else
  const garbage = net.createServer((s) =>
    s.once('data', (d: Buffer) =>
      s.end(d.toString().startsWith('GET / ') ? 'HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n' : 'NOT HTTP AT ALL\r\n\r\n'),
    ),
  )
  await new Promise<void>((resolve) => garbage.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => garbage.close(resolve)))
  const proxy = await startProxy(`http://127.0.0.1:${(garbage.address() as net.AddressInfo).port}`)
  t.teardown(() => proxy.close())
  const reply = await request(`${proxy.url}/garbage`)
  t.equal(reply.status, 502)
  t.equal(reply.headers['x-sidecar-error'], 'upstream_bad_response')
})

t.test('upstream dying mid-body: the client connection is cut, never a short "complete" response', async (t) => {
  const { proxy } = await setup(t)
  const outcome = await new Promise<{ status: number; error: string | null; got: number }>((resolve) => {
    http.get(`${proxy.url}/cut-body`, { agent: false }, (res) => {
      let got = 0
      res.on('data', (c: Buffer) => (got += c.length))
      res.on('end', () => resolve({ status: res.statusCode!, error: null, got }))
      res.on('error', (err) => resolve({ status: res.statusCode!, error: err.message, got }))
    })
  })
  t.equal(outcome.status, 200, 'headers were already sent')
  t.equal(outcome.got, 10)
  t.equal(outcome.error, 'aborted', 'the client sees the response break off')
  const id = proxy.logs.find((l) => l.path === '/cut-body')?.requestId as string | undefined
  const line = await proxy.accessLine(id ?? (await waitForPath(proxy.logs, '/cut-body')))
  t.match(line, { status: 200, incomplete: true, error: 'upstream_reset' })
})

async function waitForPath(logs: Array<Record<string, unknown>>, path: string): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const line = logs.find((l) => l.path === path)
    if (line) return line.requestId as string
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`no log line for ${path}`)
}

t.test('a client that aborts cancels its upstream request at once', async (t) => {
  const { up, proxy } = await setup(t)
  const req = http.get(`${proxy.url}/hang`, { agent: false })
  req.on('error', () => {})
  for (let i = 0; i < 100 && up.seen.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(up.seen.length, 1, 'the request reached the app')
  req.destroy()
  t.not(await within(up.seen[0]!.closed, 1000), 'timeout', 'the app saw the close within a second')
  const line = await proxy.accessLine(await waitForPath(proxy.logs, '/hang'))
  t.match(line, { status: 499, error: 'client_closed', incomplete: true })
})

t.test('a declared body over limits.maxBodyBytes: 413 before anything is forwarded', async (t) => {
  const { up, proxy } = await setup(t, { limits: { maxBodyBytes: 1000 } })
  const reply = await request(`${proxy.url}/upload`, { method: 'POST', body: Buffer.alloc(2000, 1) })
  t.equal(reply.status, 413)
  t.equal(reply.headers['x-sidecar-error'], 'body_too_large')
  t.equal(up.seen.length, 0, 'the app never saw the request')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="body_too_large"}'), 1)
  const ok = await request(`${proxy.url}/upload`, { method: 'POST', body: Buffer.alloc(1000, 1) })
  t.equal(ok.status, 200, 'a body of exactly the cap passes')
})

t.test('a chunked body passing the cap: the upstream request is aborted and the client gets 413', async (t) => {
  // requestBufferBytes 0: the body streams to the app as it comes (a larger body does by default)
  const { up, proxy } = await setup(t, { limits: { maxBodyBytes: 1500, requestBufferBytes: 0 } })
  const status = await new Promise<{ status: number; code: unknown }>((resolve, reject) => {
    const req = http.request(`${proxy.url}/upload`, { method: 'POST', agent: false }, (res) => {
      res.resume()
      resolve({ status: res.statusCode!, code: res.headers['x-sidecar-error'] })
    })
    req.on('error', reject)
    req.write(Buffer.alloc(1000, 1))
    setTimeout(() => {
      req.write(Buffer.alloc(1000, 2))
      req.end()
    }, 50)
  })
  t.same(status, { status: 413, code: 'body_too_large' })
  t.equal(up.seen.length, 1, 'forwarding had started')
  t.not(await within(up.seen[0]!.closed, 1000), 'timeout', 'the app saw the request cut, never a complete body')
})

t.test('a chunked body passing the cap within limits.requestBufferBytes: 413, and the app never hears of it', async (t) => {
  const { up, proxy } = await setup(t, { limits: { maxBodyBytes: 1500 } })
  const reply = await request(`${proxy.url}/upload`, { method: 'POST', body: Readable.from([Buffer.alloc(1000, 1), Buffer.alloc(1000, 2)]) })
  t.same([reply.status, reply.headers['x-sidecar-error']], [413, 'body_too_large'])
  t.equal(up.seen.length, 0, 'received before forwarding: nothing went to the app')
})

t.test('more headers than limits.maxHeaderCount: 431', async (t) => {
  const { up, proxy } = await setup(t, { limits: { maxHeaderCount: 10 } })
  const headers = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`x-h${i}`, 'v']))
  const reply = await request(`${proxy.url}/many`, { headers })
  t.equal(reply.status, 431)
  t.equal(reply.headers['x-sidecar-error'], 'headers_too_large')
  t.equal(up.seen.length, 0)
})

t.test('a header block over limits.maxHeaderBytes: 431 from the parser, with the catalogue code', async (t) => {
  const { up, proxy } = await setup(t, { limits: { maxHeaderBytes: 2048 } })
  const response = await raw(proxy.port, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(4000)}\r\n\r\n`)
  t.match(response, /^HTTP\/1\.1 431 /)
  t.match(response, /x-sidecar-error: headers_too_large/)
  t.equal(up.seen.length, 0)
})

t.test('a malformed request: 400 bad_request', async (t) => {
  const { up, proxy } = await setup(t)
  const response = await raw(proxy.port, 'THIS IS NOT HTTP\r\n\r\n')
  t.match(response, /^HTTP\/1\.1 400 /)
  t.match(response, /x-sidecar-error: bad_request/)
  t.equal(up.seen.length, 0)
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="bad_request"}'), 1)
})

t.test('Transfer-Encoding other than plain chunked: 501 and nothing forwarded; chunked itself passes', async (t) => {
  const { up, proxy } = await setup(t)
  const send = (te: string) =>
    raw(proxy.port, `POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n`)
  // Node's parser accepts these and hands over the body still coded; the app would take it as plain
  for (const te of ['gzip, chunked', 'deflate,chunked', 'identity, chunked']) {
    const response = await send(te)
    t.match(response, /^HTTP\/1\.1 501 /, `${te}: 501`)
    t.match(response, /x-sidecar-error: unsupported_transfer_encoding/)
  }
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="unsupported_transfer_encoding"}'), 3, 'each counted')
  // a non-final chunked and an unknown coding alone (RFC 9112 6.3), answered once and closed
  for (const te of ['chunked, gzip', 'xchunked']) {
    const response = await send(te)
    t.match(response, /^HTTP\/1\.1 400 /, `${te}: 400`)
    t.equal(response.split('HTTP/1.1 ').length - 1, 1, `${te}: one answer`)
  }
  t.equal(up.seen.length, 0, 'forwarded: 0 of 5')
  for (const te of ['chunked', 'Chunked', ' chunked']) t.match(await send(te), /^HTTP\/1\.1 200 /, `${JSON.stringify(te)}: forwarded`)
  t.equal(up.seen.length, 3)
})

t.test('a client too slow to send its headers: 408 request_timeout', async (t) => {
  const { proxy } = await setup(t, { listener: { headersTimeoutMs: 200, receiveTimeoutMs: 400 } })
  const response = await raw(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\n', 5000)
  t.match(response, /^HTTP\/1\.1 408 /)
  t.match(response, /x-sidecar-error: request_timeout/)
})
