// The drain protocol through the real proxy: readiness fails at once, requests are still served
// during drain.delayMs (told to close their connections), then the listener closes, in-flight
// requests finish, and nothing sent before the close is lost. The delay runs on the fake clock:
// the test holds it open for as long as it needs, then moves time on.
import { execFile } from 'node:child_process'
import http from 'node:http'
import http2 from 'node:http2'
import { createRequire } from 'node:module'
import t from 'tap'
import { request, until, within } from '../fixtures/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'

t.test('drain, HTTP/1.1 keep-alive: not ready at once, served during the delay and told to close, then closed', async (t) => {
  const releases: Array<() => void> = []
  const up = await fakeUpstream()
    .route('/slow', (_req, res) => releases.push(() => res.end('finished')))
    .listen()
  const clock = fakeClock(1_000_000, { sleepsWait: true })
  const proxy = await startProxy(up.url, { drain: { delayMs: 400, timeoutMs: 5000 } }, { clock })
  // A keep-alive client: it never asks for `Connection: close` itself, so only the drain can.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(async () => {
    agent.destroy()
    await proxy.close()
    await up.close()
  })
  const before = await request(`${proxy.url}/before`, { agent })
  t.equal(before.headers.connection, 'keep-alive', 'before the drain, the connection is kept')
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200)
  const slow = request(`${proxy.url}/slow`)
  await until(() => releases.length === 1)
  const stopped = proxy.app.close('test', 400)

  const ready = await request(`${proxy.adminUrl}/ready`)
  t.equal(ready.status, 503, 'readiness fails at once')
  t.match(JSON.parse(ready.body.toString()).holding, { draining: /draining since .* \(test\)/ })
  const during = await request(`${proxy.url}/during-delay`, { agent })
  t.equal(during.status, 200, 'a request on a kept-alive connection during the delay is served')
  t.equal(during.headers.connection, 'close', 'and told to close its connection')
  const fresh = await request(`${proxy.url}/during-delay`, { agent })
  t.equal(fresh.status, 200, 'a new connection during the delay is still accepted')
  t.notOk(proxy.logs.some((l) => l.msg === 'draining: listener closed, finishing in-flight requests'), 'the listener stays open while the clock has not reached drain.delayMs')

  clock.advance(400)
  await until(() => proxy.logs.some((l) => l.msg === 'draining: listener closed, finishing in-flight requests'))
  await t.rejects(request(`${proxy.url}/after`), { code: 'ECONNREFUSED' }, 'after the delay, no new connections')
  releases[0]!()
  const reply = await slow
  t.equal(reply.status, 200, 'the slow in-flight request completed')
  t.equal(reply.body.toString(), 'finished')
  t.equal(await stopped, 0, 'nothing was cut')
})

t.test('drain, HTTP/2: GOAWAY during the delay, no new stream on the old session, new connections served until the listener closes', async (t) => {
  const { ca, server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const releases: Array<() => void> = []
  const up = await fakeUpstream()
    .route('/slow', (_req, res) => releases.push(() => res.end('finished')))
    .listen()
  const clock = fakeClock(1_000_000, { sleepsWait: true })
  const proxy = await startProxy(up.url, { drain: { delayMs: 400, timeoutMs: 5000 }, listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } }, { clock })
  const url = `https://127.0.0.1:${proxy.port}`
  const connect = () => {
    const session = http2.connect(url, { ca: ca.cert, servername: 'localhost' })
    session.on('error', () => {})
    t.teardown(() => session.destroy())
    return session
  }
  const get = (session: http2.ClientHttp2Session, path: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const stream = session.request({ ':path': path })
      let status = 0
      let body = ''
      stream.on('response', (h) => (status = h[':status']!))
      stream.on('data', (c: Buffer) => (body += c.toString()))
      stream.on('end', () => resolve({ status, body }))
      stream.on('error', reject)
    })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  const old = connect()
  const goaway = new Promise<void>((resolve) => old.once('goaway', () => resolve()))
  t.equal((await get(old, '/before')).status, 200)
  const slow = get(old, '/slow')
  await until(() => releases.length === 1)
  const stopped = proxy.app.close('test', 400)

  await within(goaway, 2000, 'GOAWAY')
  t.pass('the old session got GOAWAY at the start of the delay')
  t.throws(() => old.request({ ':path': '/new-stream' }), { code: 'ERR_HTTP2_GOAWAY_SESSION' }, 'no new stream on it')
  const replacement = connect()
  t.equal((await get(replacement, '/during-delay')).status, 200, 'a new connection during the delay is served')

  clock.advance(400)
  await until(() => proxy.logs.some((l) => l.msg === 'draining: listener closed, finishing in-flight requests'))
  await t.rejects(request(`${url}/after`, { tls: { ca: ca.cert } }), { code: 'ECONNREFUSED' }, 'once the listener closes, no new connections')
  releases[0]!()
  t.same(await slow, { status: 200, body: 'finished' }, 'the stream open at GOAWAY finished')
  t.equal(await stopped, 0)
})

t.test('under autocannon load through the drain delay: every request succeeds', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream(), { drain: { delayMs: 2500, timeoutMs: 10_000 } })
  const bin = createRequire(import.meta.url).resolve('autocannon/autocannon.js')
  // A separate process, 8 keep-alive connections for 2 s; the drain starts 0.5 s in, so 1.5 s of
  // the load meets "Connection: close" answers and reconnects; the listener closes after it.
  const child = execFile(process.execPath, [bin, '-c', '8', '-d', '2', '-j', `${proxy.url}/load`], { encoding: 'utf8' })
  const output = new Promise<string>((resolve, reject) => {
    let stdout = ''
    child.stdout!.on('data', (c: string) => (stdout += c))
    child.once('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`autocannon exited ${code}`))))
  })
  await new Promise((resolve) => setTimeout(resolve, 500))
  const stopped = proxy.app.close('autocannon test', 2500)
  const result = JSON.parse(await output) as { requests: { total: number }; errors: number; timeouts: number; non2xx: number; resets: number }
  t.ok(result.requests.total > 500, `${result.requests.total} requests`)
  t.same({ errors: result.errors, timeouts: result.timeouts, non2xx: result.non2xx }, { errors: 0, timeouts: 0, non2xx: 0 }, `0 failed of ${result.requests.total}`)
  t.equal(await stopped, 0)
})
