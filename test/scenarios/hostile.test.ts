// Hostile input on the client-facing listener, written as raw bytes (no HTTP client to tidy the
// request up). Each case checks what the client gets (status and x-sidecar-error, or a close)
// AND what the app got: smuggling shapes must reach it not at all, or never as a complete
// request. Node's parser refuses many of these itself; the cases pin that down so that a Node
// upgrade or a parser option cannot silently reopen them.
import http from 'node:http'
import net from 'node:net'
import t, { type Test } from 'tap'
import { metric, raw } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'

interface Received {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  /** The request's body arrived whole (its end was seen). */
  complete: boolean
}

/** An app that records every request the proxy sent it (health checks aside) and answers 200. */
async function recordingApp(t: Test) {
  const received: Received[] = []
  const server = http.createServer((req, res) => {
    if (req.headers['user-agent'] === 'sidecar-proxy-probe') return res.end('ok')
    const r: Received = { method: req.method!, url: req.url!, headers: req.headers, complete: false }
    received.push(r)
    req.on('error', () => {})
    req.resume().on('end', () => {
      r.complete = true
      res.end('app answered')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, received }
}

async function setup(t: Test, config: Record<string, unknown> = {}) {
  const app = await recordingApp(t)
  const proxy = await startProxy(app.url, config)
  t.teardown(() => proxy.close())
  return { app, proxy }
}

const statusOf = (reply: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(reply)?.[1] ?? 0)
const codeOf = (reply: string) => /\r\nx-sidecar-error: (\S+)\r\n/i.exec(reply)?.[1]

const H = 'Host: app.local\r\nConnection: close\r\n'
const post = (headers: string, body: string) => `POST /smuggle HTTP/1.1\r\n${H}${headers}\r\n${body}`

/** One connection to the app (its url: the fixture's): the app takes requests one at a time, in
 *  the order they were forwarded. */
const oneConnection = { backends: [{ name: 'app', url: 'http://127.0.0.1:1', maxConnections: 1 }] }

/** Complete requests at the app, counted once a request sent now has been answered: on the one
 *  connection, whatever was forwarded before it had ended there by then (the app answers a
 *  request only once its body is whole). */
async function completeAtApp(t: Test, port: number, app: { received: Received[] }): Promise<number> {
  t.equal(statusOf(await raw(port, `GET /fence HTTP/1.1\r\n${H}\r\n`)), 200, 'a request after them is served')
  return app.received.filter((r) => r.complete && r.url !== '/fence').length
}

/** [what, bytes, status, x-sidecar-error]: none of these may reach the app as a request. */
const REFUSED: Array<[string, string, number, string]> = [
  // request smuggling shapes
  ['Content-Length with Transfer-Encoding', post('Content-Length: 4\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\nGET /x HTTP/1.1\r\n\r\n'), 400, 'bad_request'],
  ['two different Content-Length', post('Content-Length: 4\r\nContent-Length: 5\r\n', 'abcde'), 400, 'bad_request'],
  ['two equal Content-Length', post('Content-Length: 4\r\nContent-Length: 4\r\n', 'abcd'), 400, 'bad_request'],
  ['Content-Length as a list', post('Content-Length: 4, 4\r\n', 'abcd'), 400, 'bad_request'],
  ['Content-Length 4x', post('Content-Length: 4x\r\n', 'abcd'), 400, 'bad_request'],
  ['Content-Length -1', post('Content-Length: -1\r\n', 'abcd'), 400, 'bad_request'],
  ['Content-Length +4', post('Content-Length: +4\r\n', 'abcd'), 400, 'bad_request'],
  ['Content-Length 0x4', post('Content-Length: 0x4\r\n', 'abcd'), 400, 'bad_request'],
  ['Transfer-Encoding: xchunked', post('Transfer-Encoding: xchunked\r\n', '0\r\n\r\n'), 400, 'bad_request'],
  ['Transfer-Encoding with a space before the colon', post('Transfer-Encoding : chunked\r\n', '0\r\n\r\n'), 400, 'bad_request'],
  ['Transfer-Encoding twice (chunked, then gzip)', post('Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n', '0\r\n\r\n'), 400, 'bad_request'],
  ['Transfer-Encoding: chunked, gzip (chunked not last)', post('Transfer-Encoding: chunked, gzip\r\n', '0\r\n\r\n'), 400, 'bad_request'],
  ['Transfer-Encoding: gzip, chunked (a coding the proxy would drop)', post('Transfer-Encoding: gzip, chunked\r\n', '0\r\n\r\n'), 501, 'unsupported_transfer_encoding'],
  ['Transfer-Encoding behind a vertical tab', post('Transfer-Encoding:\x0bchunked\r\n', '0\r\n\r\n'), 400, 'bad_request'],
  ['chunk size zz', post('Transfer-Encoding: chunked\r\n', 'zz\r\nabc\r\n0\r\n\r\n'), 400, 'bad_request'],
  ['chunk size -1', post('Transfer-Encoding: chunked\r\n', '-1\r\nabc\r\n0\r\n\r\n'), 400, 'bad_request'],
  ['chunk size past 64 bits', post('Transfer-Encoding: chunked\r\n', 'fffffffffffffffff1\r\nabc\r\n0\r\n\r\n'), 400, 'bad_request'],
  ['chunk lines ended by bare LF', post('Transfer-Encoding: chunked\r\n', '3\nabc\n0\n\n'), 400, 'bad_request'],
  ['header lines ended by bare LF', 'GET / HTTP/1.1\nHost: app.local\n\n', 400, 'bad_request'],
  ['header lines ended by bare CR', 'GET / HTTP/1.1\rHost: app.local\r\r\n', 400, 'bad_request'],
  ['obs-fold (a header continued on the next line)', `GET / HTTP/1.1\r\n${H}X-Folded: a\r\n b\r\n\r\n`, 400, 'bad_request'],
  ['whitespace before a header colon', `GET / HTTP/1.1\r\n${H}X-Space : a\r\n\r\n`, 400, 'bad_request'],
  ['NUL in a header value', `GET / HTTP/1.1\r\n${H}X-Nul: a\x00b\r\n\r\n`, 400, 'bad_request'],
  // Host and request-target
  ['two Host headers', `GET / HTTP/1.1\r\n${H}Host: evil.example\r\n\r\n`, 400, 'bad_request'],
  ['no Host on HTTP/1.1', 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'bad_request'],
  ['Host with userinfo (@)', 'GET / HTTP/1.1\r\nHost: app.local@evil.example\r\n\r\n', 400, 'bad_request'],
  ['Host with a path (/)', 'GET / HTTP/1.1\r\nHost: app.local/evil\r\n\r\n', 400, 'bad_request'],
  ['Host with a space', 'GET / HTTP/1.1\r\nHost: app.local evil\r\n\r\n', 400, 'bad_request'],
  ['empty Host', 'GET / HTTP/1.1\r\nHost:\r\n\r\n', 400, 'bad_request'],
  ['absolute-form URL naming another host than Host', `GET http://evil.example/x HTTP/1.1\r\n${H}\r\n`, 400, 'bad_request'],
  ['request-target without a leading slash', `GET x/y HTTP/1.1\r\n${H}\r\n`, 400, 'bad_request'],
  ['OPTIONS * (asks about the proxy, not the app)', `OPTIONS * HTTP/1.1\r\n${H}\r\n`, 400, 'bad_request'],
  ['CONNECT', 'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n', 405, 'method_not_allowed'],
  ['a lower-case method', `get / HTTP/1.1\r\n${H}\r\n`, 400, 'bad_request'],
  ['an unknown method', `BREW / HTTP/1.1\r\n${H}\r\n`, 400, 'bad_request'],
  // versions
  ['HTTP/0.9 (no version)', 'GET /\r\n\r\n', 505, 'http_version_not_supported'],
  ['HTTP/1.2', `GET / HTTP/1.2\r\n${H}\r\n`, 400, 'bad_request'],
  ['HTTP/2.0 written as text on the HTTP/1 port', `GET / HTTP/2.0\r\n${H}\r\n`, 505, 'http_version_not_supported'],
  ['HTTP/3.0', `GET / HTTP/3.0\r\n${H}\r\n`, 400, 'bad_request'],
  // sizes (limits.maxHeaderBytes 16 KiB, limits.maxHeaderCount 100)
  ['a 20 KB request line', `GET /${'a'.repeat(20_000)} HTTP/1.1\r\n${H}\r\n`, 431, 'headers_too_large'],
  ['a 20 KB header', `GET / HTTP/1.1\r\n${H}X-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
  ['150 headers', `GET / HTTP/1.1\r\n${H}${Array.from({ length: 150 }, (_, i) => `X-H${i}: v\r\n`).join('')}\r\n`, 431, 'headers_too_large'],
  ['a declared body over limits.maxBodyBytes', post('Content-Length: 2000\r\n', 'x'.repeat(2000)), 413, 'body_too_large'],
]

t.test('malformed, ambiguous and oversized requests: refused, and the app receives nothing', async (t) => {
  const { app, proxy } = await setup(t, { limits: { maxBodyBytes: 1000 } })
  let forwarded = 0
  for (const [what, bytes, status, code] of REFUSED) {
    const before = app.received.length
    const reply = await raw(proxy.port, bytes)
    t.equal(statusOf(reply), status, `${what}: ${status}`)
    t.equal(codeOf(reply), code, `${what}: x-sidecar-error ${code}`)
    forwarded += app.received.length - before
  }
  t.equal(forwarded, 0, `forwarded to the app: ${forwarded} of ${REFUSED.length}`)
  t.equal((await raw(proxy.port, `GET /after HTTP/1.1\r\n${H}\r\n`)).split('\r\n')[0], 'HTTP/1.1 200 OK', 'the proxy still serves')
})

t.test('a body whose chunk framing breaks mid-stream never reaches the app as a complete request', async (t) => {
  const { app, proxy } = await setup(t, oneConnection)
  const cases = [
    post('Transfer-Encoding: chunked\r\n', '3\r\nabcdef\r\n0\r\n\r\n'), // more data than the chunk size
    post('Transfer-Encoding: chunked\r\n', '5\r\nabc\r\nzz\r\n'), // a bad size after a good chunk
  ]
  for (const bytes of cases) {
    const reply = await raw(proxy.port, bytes)
    t.ok(statusOf(reply) === 400 || reply === '', `400 or a close, got ${JSON.stringify(reply.split('\r\n')[0])}`)
  }
  // The body streams (no buffering of non-idempotent requests), so the app may see the start.
  const complete = await completeAtApp(t, proxy.port, app)
  t.equal(complete, 0, `complete requests at the app: ${complete} of ${cases.length}`)
})

t.test('a chunked body streamed past limits.maxBodyBytes: 413, and the app never gets it whole', async (t) => {
  const { app, proxy } = await setup(t, { ...oneConnection, limits: { maxBodyBytes: 1000 } })
  const chunk = `400\r\n${'x'.repeat(1024)}\r\n`
  const reply = await raw(proxy.port, post('Transfer-Encoding: chunked\r\n', chunk + chunk + '0\r\n\r\n'))
  t.equal(statusOf(reply), 413)
  t.equal(codeOf(reply), 'body_too_large')
  t.equal(await completeAtApp(t, proxy.port, app), 0, 'complete requests at the app: 0 of 1')
})

t.test('slowloris and a slow body are closed by the listener timeouts', async (t) => {
  const { app, proxy } = await setup(t, { ...oneConnection, listener: { headersTimeoutMs: 300, receiveTimeoutMs: 600 } })
  /** Sends `head`, then one byte of `drip` every 100 ms; resolves with the reply once closed. */
  const trickle = (head: string, drip: string) =>
    new Promise<{ reply: string; ms: number }>((resolve) => {
      const started = Date.now()
      const socket = net.connect(proxy.port, '127.0.0.1', () => socket.write(head))
      let i = 0
      const timer = setInterval(() => i < drip.length && socket.writable && socket.write(drip[i++]!), 100)
      const chunks: Buffer[] = []
      socket.on('data', (c: Buffer) => chunks.push(c))
      socket.on('error', () => {})
      socket.on('close', () => {
        clearInterval(timer)
        resolve({ reply: Buffer.concat(chunks).toString('latin1'), ms: Date.now() - started })
      })
    })
  const headers = await trickle('GET / HTTP/1.1\r\nHost: app.local\r\n', 'X-A: b\r\n'.repeat(100))
  t.equal(statusOf(headers.reply), 408, 'headers sent a byte at a time: 408')
  t.equal(codeOf(headers.reply), 'request_timeout')
  t.ok(headers.ms < 3000, `closed after ${headers.ms} ms (headersTimeoutMs 300; checked every 300 ms)`)
  const body = await trickle(post('Content-Length: 100\r\n', ''), 'x'.repeat(100))
  t.ok(body.ms < 3000, `a body sent a byte at a time: closed after ${body.ms} ms (receiveTimeoutMs 600)`)
  t.equal(await completeAtApp(t, proxy.port, app), 0, 'complete requests at the app: 0 of 2')
})

t.test('what is forwarded, and exactly how', async (t) => {
  const { app, proxy } = await setup(t)
  const forward = async (bytes: string) => {
    const before = app.received.length
    const reply = await raw(proxy.port, bytes)
    t.equal(statusOf(reply), 200, JSON.stringify(bytes.split('\r\n')[0]))
    return app.received[before]!
  }

  // Paths reach the app byte for byte: the proxy routes nothing by path, so there is no rule to
  // get around, and normalising would make the app see another URL than the client sent.
  for (const path of ['/a/%2e%2e/b', '/a/../b', '//a//b', '/a\\b', '/a;b=c?x=%00&y=..%2f']) {
    t.equal((await forward(`GET ${path} HTTP/1.1\r\n${H}\r\n`)).url, path, `${path}: as sent`)
  }
  // absolute-form naming the Host: forwarded in origin-form
  t.equal((await forward(`GET http://APP.local/x?y=1 HTTP/1.1\r\n${H}\r\n`)).url, '/x?y=1', 'absolute-form with the Host authority: origin-form')
  // HTTP/1.0 may omit Host
  t.equal((await forward('GET /old HTTP/1.0\r\n\r\n')).url, '/old', 'HTTP/1.0 without Host')
  // Transfer-Encoding spelled in ways RFC 9112 allows
  t.equal((await forward(post('Transfer-Encoding:\tChunked\r\n', '3\r\nabc\r\n0\r\n\r\n'))).complete, true, 'Transfer-Encoding with a tab and in mixed case')

  // A WebSocket upgrade reaches the app as one; an app that answers it with anything but a 101
  // (here a 200) gives an ordinary answer, and the connection is not turned into a tunnel.
  const ws = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
  const upgraded = await raw(proxy.port, `GET /ws HTTP/1.1\r\nHost: app.local\r\n${ws}\r\n`)
  t.match(upgraded, /^HTTP\/1\.1 200 [^]*\r\nconnection: close\r\n/i, 'no 101 from the app: its answer, then the connection closes')
  t.equal(app.received.at(-1)!.headers.upgrade, 'websocket', 'the app saw the upgrade it was asked for')
  // h2c: a tunnel to the app speaking HTTP/2 would carry requests past the proxy (h2c smuggling)
  const before = app.received.length
  const h2c = await raw(proxy.port, 'GET /h2c HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n')
  t.equal(statusOf(h2c), 400, 'Upgrade: h2c is refused')
  t.equal(app.received.length, before, 'and reaches nothing')

  // Spoofed client identity: dropped (listener.trustForwardedHeaders is off), the proxy's own set.
  const spoofed = await forward(
    `GET /who HTTP/1.1\r\n${H}X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n` +
      'X-Forwarded-Port: 443\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n\r\n',
  )
  t.equal(spoofed.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(spoofed.headers['x-forwarded-proto'], 'http')
  t.equal(spoofed.headers['x-forwarded-host'], 'app.local')
  t.equal(spoofed.headers['x-forwarded-port'], undefined)
  t.equal(spoofed.headers['x-real-ip'], undefined)
  t.equal(spoofed.headers.forwarded, undefined)

  // Connection naming the proxy's own headers cannot make it drop them.
  const hop = await forward(`GET /hop HTTP/1.1\r\nHost: app.local\r\nConnection: close, x-forwarded-for, x-request-id, x-forwarded-proto\r\n\r\n`)
  t.equal(hop.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(hop.headers['x-forwarded-proto'], 'http')
  t.match(hop.headers['x-request-id'], /^[0-9a-f-]{36}$/)
})

t.test('refusals are counted and logged with the reason', async (t) => {
  const { proxy } = await setup(t)
  await raw(proxy.port, `GET / HTTP/1.1\r\n${H}Host: evil.example\r\n\r\n`)
  await raw(proxy.port, 'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n')
  await raw(proxy.port, `GET / HTTP/1.1\r\n${H}Host: evil.example\r\n\r\n`)
  t.match(proxy.logs.filter((l) => l.msg === 'request refused'), [
    { level: 'info', error: 'bad_request', reason: '2 Host headers', client: '127.0.0.1' },
    { level: 'info', error: 'method_not_allowed', reason: 'CONNECT' },
    { level: 'info', error: 'bad_request' },
  ])
  t.match(
    proxy.logs.filter((l) => l.level === 'warn'),
    [{ msg: 'requests refused', kind: 'bad_request' }, { msg: 'requests refused', kind: 'method_not_allowed' }],
    'one warning per kind, not per refusal',
  )
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  t.match(metrics, /sidecar_rejected_requests_total\{reason="bad_request"\} 2/)
  t.match(metrics, /sidecar_rejected_requests_total\{reason="method_not_allowed"\} 1/)
})

t.test('garbage pipelined after a valid request: the executed request is answered, then the connection closes', async (t) => {
  const { app, proxy } = await setup(t)
  // One write: a complete POST the app will execute, then bytes that are no request at all.
  const reply = await raw(proxy.port, 'POST /order HTTP/1.1\r\nHost: app.local\r\nContent-Length: 2\r\n\r\nhiXYZ\r\n\r\n')
  t.equal(app.received.length, 1, 'the app executed the order')
  t.equal(statusOf(reply), 200, "the client gets the app's answer, not a bare 400")
  t.match(reply, /\r\nconnection: close\r\n/i, 'told the connection ends after it')
  t.match(reply, /app answered$/, 'whole, and nothing after it')
  const access = proxy.logs.find((l) => l.msg === 'request' && l.path === '/order')
  t.match(access, { status: 200 }, 'the access line says it was answered')
  t.notOk(access && 'error' in access, 'not client_closed')
  t.match(
    proxy.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('request refused by the parser')),
    [{ level: 'info', error: 'bad_request' }],
    'and the garbage is logged as refused',
  )
})

t.test('header names with underscores never reach the app unless allowed: no forged identity via CGI folding', async (t) => {
  const { app, proxy } = await setup(t, { log: { level: 'debug' } })
  const forged = 'X_Client_Subject: CN=admin\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Forwarded_Host: evil.example\r\n'
  t.equal(statusOf(await raw(proxy.port, `GET /u HTTP/1.1\r\n${H}X-Request-Id: us-1\r\n${forged}\r\n`)), 200)
  const got = app.received.at(-1)!.headers
  t.same(Object.keys(got).filter((n) => n.includes('_')), [], 'the app got no name holding "_"')
  t.equal(got['x-forwarded-for'], '127.0.0.1', 'its X-Forwarded-For is the real one')
  t.match(await metric(proxy.adminUrl, 'sidecar_request_headers_dropped_total{reason="underscore"}'), 4, 'counted')
  t.match(proxy.logs.find((l) => l.msg === 'request headers with underscores dropped'), {
    level: 'debug',
    requestId: 'us-1',
    headers: ['x_client_subject', 'x_forwarded_for', 'x_real_ip', 'x-forwarded_host'],
  })

  const open = await setup(t, { listener: { headersWithUnderscores: 'allow' } })
  await raw(open.proxy.port, `GET /u HTTP/1.1\r\n${H}X_Api_Key: k\r\n\r\n`)
  t.equal(open.app.received.at(-1)!.headers.x_api_key, 'k', 'listener.headersWithUnderscores: allow forwards them')
})

/** Sends the head, then (unless the answer came first) the body once `100 Continue` arrived. */
function expectContinue(port: number, head: string, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let got = ''
    let sent = false
    socket.on('data', (c: Buffer) => {
      got += c.toString('latin1')
      if (!sent && got.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) {
        sent = true
        socket.write(body)
      }
    })
    socket.on('error', reject)
    socket.on('close', () => resolve(got))
    socket.write(head)
  })
}

t.test('Expect: 100-continue: refused from the headers without a 100; otherwise a 100, then the body forwarded whole', async (t) => {
  const { app, proxy } = await setup(t, { limits: { maxBodyBytes: 1024 } })
  const big = await expectContinue(proxy.port, `POST /upload HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 209715200\r\n\r\n`, '')
  t.equal(statusOf(big), 413, 'a declared 200 MB body over the cap: 413 at once')
  t.notMatch(big, /100 Continue/, 'and never invited to send it')
  t.equal(app.received.length, 0)

  const small = await expectContinue(proxy.port, `POST /upload HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n`, 'hello')
  t.match(small, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /, 'a 100, then the answer')
  t.equal(app.received.length, 1)
  t.ok(app.received[0]!.complete, 'the body arrived whole')
  t.equal(app.received[0]!.headers.expect, undefined, 'the expectation was between the client and the proxy')
})
