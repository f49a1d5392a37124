// WebSocket through the real proxy, with the `ws` package on both ends (client and app): echo
// over ws:// and wss://, a 1 MiB binary message, close codes both ways, the handshake's headers,
// a refusal passed on, the idle timeout, the tunnel cap, and a tunnel during a drain.
import { createHash, randomBytes } from 'node:crypto'
import http, { type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { json, metric, raw, until, within } from '../fixtures/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { startProxy, type RunningProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'

const { ca, server } = devCerts()

/** An app with a WebSocket echo at /echo (it closes with the code a client asks for in
 *  `close:CODE`), a refusal at /private (401 instead of 101), and plain HTTP elsewhere. */
async function wsApp(t: Test) {
  const handshakes: IncomingMessage[] = []
  const sockets: WebSocket[] = []
  const wss = new WebSocketServer({ noServer: true })
  wss.on('connection', (ws) => {
    sockets.push(ws)
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? '' : data.toString()
      if (text.startsWith('close:')) ws.close(Number(text.slice(6)), 'asked to')
      else ws.send(data, { binary: isBinary })
    })
  })
  const server = http.createServer((_req, res) => res.end('plain'))
  server.on('upgrade', (req, socket, head) => {
    handshakes.push(req)
    if (req.url === '/private') {
      socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\nlog in first')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const ws of sockets) ws.terminate()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, handshakes, sockets }
}

function connect(url: string, opts: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca: ca.cert, ...opts })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

function next(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return within(new Promise((resolve) => ws.once('message', (data: Buffer, isBinary) => resolve({ data, isBinary }))), 5000, 'a message')
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return within(new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))), 5000, 'the close')
}

async function proxyFor(t: Test, appUrl: string, config: Record<string, unknown> = {}, appDeps = {}) {
  const proxy = await startProxy(appUrl, config, appDeps)
  t.teardown(() => proxy.close())
  return proxy
}

t.test('ws:// echo through the proxy: text, a 1 MiB binary message, forwarding headers, the access line at the end', async (t) => {
  const app = await wsApp(t)
  const proxy = await proxyFor(t, app.url)
  const ws = await connect(`ws://127.0.0.1:${proxy.port}/echo`, { headers: { 'x-request-id': 'ws-1', 'x-forwarded-for': '6.6.6.6' } })
  ws.send('hello')
  t.same((await next(ws)).data.toString(), 'hello')
  const big = randomBytes(1024 * 1024)
  ws.send(big)
  const back = await next(ws)
  t.ok(back.isBinary, 'binary stays binary')
  t.equal(createHash('sha256').update(back.data).digest('hex'), createHash('sha256').update(big).digest('hex'), '1 MiB back byte for byte')

  const handshake = app.handshakes.at(-1)!
  t.equal(handshake.headers['x-forwarded-for'], '127.0.0.1', 'the handshake got the usual forwarding headers')
  t.equal(handshake.headers['x-request-id'], 'ws-1')
  t.equal(handshake.headers.upgrade, 'websocket')
  t.equal(await metric(proxy.adminUrl, 'sidecar_open_tunnels'), 1, 'counted while open')
  t.match((await json<{ tunnels: { open: number } }>(`${proxy.adminUrl}/status`)).body.tunnels, { open: 1 }, 'and on /status')

  ws.close(1000, 'done')
  t.same(await closed(ws), { code: 1000, reason: 'done' })
  const line = await proxy.accessLine('ws-1')
  t.match(line, { status: 101, backend: 'app', tunnel: 'closed' }, 'one access line, written when the tunnel ended')
  t.ok((line.bytesIn as number) > 1024 * 1024 && (line.bytesOut as number) > 1024 * 1024, `bytes each way: ${line.bytesIn} in, ${line.bytesOut} out`)
  await until(() => proxy.logs.length > 0)
  t.equal(await metric(proxy.adminUrl, 'sidecar_open_tunnels'), 0)
})

t.test('close codes both ways; an app that refuses the upgrade is an ordinary answer, no tunnel', async (t) => {
  const app = await wsApp(t)
  const proxy = await proxyFor(t, app.url)
  const ws = await connect(`ws://127.0.0.1:${proxy.port}/echo`)
  ws.send('close:4001')
  t.same(await closed(ws), { code: 4001, reason: 'asked to' }, "the app's close code reaches the client")
  const ws2 = await connect(`ws://127.0.0.1:${proxy.port}/echo`)
  await until(() => app.sockets.length === 2)
  const serverSide = new Promise<number>((resolve) => app.sockets[1]!.once('close', (code) => resolve(code)))
  ws2.close(4002)
  t.equal(await within(serverSide, 5000, 'the app hearing the close'), 4002, "the client's close code reaches the app")

  const refused = await raw(proxy.port, 'GET /private HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
  t.match(refused, /^HTTP\/1\.1 401 Unauthorized\r\n/, "the app's 401, passed on")
  t.match(refused, /\r\nconnection: close\r\n/i, 'and the connection closes: no tunnel')
  t.match(refused, /log in first$/)
  t.equal(await metric(proxy.adminUrl, 'sidecar_open_tunnels'), 0)
})

t.test('wss:// through the TLS listener (HTTP/2 on offer: WebSocket clients take HTTP/1.1)', async (t) => {
  const app = await wsApp(t)
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const proxy = await proxyFor(t, app.url, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  const ws = await connect(`wss://localhost:${proxy.port}/echo`)
  ws.send('over tls')
  t.equal((await next(ws)).data.toString(), 'over tls')
  ws.close()
  await closed(ws)
  t.equal(app.handshakes.at(-1)!.headers['x-forwarded-proto'], 'https')
})

t.test('refused before the app: Upgrade: h2c, an upgrade with a body, over the tunnel cap; app down: 503', async (t) => {
  const app = await wsApp(t)
  const proxy = await proxyFor(t, app.url, { limits: { maxTunnels: 1 } })
  const h2c = await raw(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n')
  t.match(h2c, /^HTTP\/1\.1 400 [^]*x-sidecar-error: bad_request/, 'Upgrade: h2c refused (h2c smuggling)')
  const withBody = await raw(proxy.port, 'POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc')
  t.match(withBody, /^HTTP\/1\.1 400 /, 'an upgrade carrying a body is refused')
  const first = await connect(`ws://127.0.0.1:${proxy.port}/echo`)
  await t.rejects(connect(`ws://127.0.0.1:${proxy.port}/echo`), /Unexpected server response: 503/, 'the second tunnel is over limits.maxTunnels')
  t.equal(app.handshakes.filter((h) => h.url === '/echo').length, 1, 'none of these reached the app')
  first.terminate()

  const down = await proxyFor(t, 'http://127.0.0.1:1')
  await t.rejects(connect(`ws://127.0.0.1:${down.port}/echo`), /Unexpected server response: 50[23]/, 'the app down: the proxy answers')
})

t.test('a tunnel with no traffic for limits.tunnelIdleTimeoutMs is closed', async (t) => {
  const app = await wsApp(t)
  const proxy = await proxyFor(t, app.url, { limits: { tunnelIdleTimeoutMs: 300 } })
  const ws = await connect(`ws://127.0.0.1:${proxy.port}/echo`, { headers: { 'x-request-id': 'idle-1' } })
  const started = Date.now()
  const end = await closed(ws)
  t.equal(end.code, 1006, 'cut without a close frame (the proxy does not speak WebSocket)')
  t.ok(Date.now() - started >= 250, `after ${Date.now() - started} ms of silence`)
  t.match(await proxy.accessLine('idle-1'), { status: 101, tunnel: 'idle' })
})

t.test('drain: a tunnel keeps working during the delay and is cut at drain.timeoutMs', async (t) => {
  const app = await wsApp(t)
  const clock = fakeClock(1_000_000, { sleepsWait: true })
  const proxy: RunningProxy = await startProxy(app.url, { drain: { delayMs: 1000, timeoutMs: 5000 } }, { clock })
  const ws = await connect(`ws://127.0.0.1:${proxy.port}/echo`)
  const stopped = proxy.app.close('test', 1000)
  ws.send('during the delay')
  t.equal((await next(ws)).data.toString(), 'during the delay', 'served during the drain delay')
  clock.advance(1000)
  await until(() => proxy.logs.some((l) => l.msg === 'draining: listener closed, finishing in-flight requests'))
  ws.send('still open')
  t.equal((await next(ws)).data.toString(), 'still open', 'kept after the listener closed, until the deadline')
  const cut = closed(ws)
  clock.advance(4000)
  t.equal((await cut).code, 1006, 'cut at drain.timeoutMs')
  t.equal(await stopped, 1, 'and counted as cut')
})

t.test("an app that resets its end of a tunnel: the client's connection is cut, the line says error", async (t) => {
  const app = await wsApp(t)
  const proxy = await proxyFor(t, app.url)
  const ws = await connect(`ws://127.0.0.1:${proxy.port}/echo`, { headers: { 'x-request-id': 'reset-1' } })
  await until(() => app.sockets.length === 1)
  const cut = closed(ws)
  ;(app.sockets[0] as unknown as { _socket: import('node:net').Socket })._socket.resetAndDestroy()
  t.equal((await cut).code, 1006, 'the client sees the connection end')
  t.match(await proxy.accessLine('reset-1'), { status: 101, tunnel: 'error', incomplete: true })
})
