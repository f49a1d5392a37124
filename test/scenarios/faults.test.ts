// Injected faults: the app missing at start, a pooled connection the app has already dropped,
// clients aborting in bulk, and the proxy itself out of file descriptors. Each case counts what
// clients got and what the app and the sockets were left with (docs/hostile-input.md lists the
// figures). The crash mid-response, slow upstream and 503 storm cases live in failures.test.ts
// and resilience.test.ts.
import http from 'node:http'
import net from 'node:net'
import t from 'tap'
import { runBinary, waitForLine } from '../fixtures/binary.js'
import { metric, raw, request, until } from '../fixtures/client.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

const tally = (outcomes: string[]) => outcomes.reduce<Record<string, number>>((o, k) => ({ ...o, [k]: (o[k] ?? 0) + 1 }), {})

/** One GET on a fresh connection: "status code" (x-sidecar-error) or "reset" when the connection broke. */
function outcome(port: number, path: string): Promise<string> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(`${res.statusCode} ${res.headers['x-sidecar-error'] ?? ''}`.trim()))
      res.on('error', () => resolve('reset'))
    })
    req.on('error', () => resolve('reset'))
    req.setTimeout(10_000, () => req.destroy())
  })
}

t.test('the app down at start: catalogue errors and readiness held, then served without a restart', async (t) => {
  const port = await freePort()
  const proxy = await startProxy(`http://127.0.0.1:${port}`, { backends: [{ name: 'app', url: `http://127.0.0.1:${port}`, healthCheck: { intervalMs: 100, timeoutMs: 100 } }] })
  t.teardown(() => proxy.close())
  const down = await Promise.all(Array.from({ length: 20 }, () => request(`${proxy.url}/x`)))
  t.same(tally(down.map((r) => `${r.status} ${r.headers['x-sidecar-error']}`)), { '503 upstream_unhealthy': 20 }, 'while down: 503 upstream_unhealthy, 20 of 20')
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 503, 'not ready while the app is down')

  const up = await fakeUpstream().listen(port)
  t.teardown(() => up.close())
  for (let i = 0; i < 100 && (await request(`${proxy.adminUrl}/ready`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50))
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200, 'ready once the app answers its health checks')
  const served = await Promise.all(Array.from({ length: 20 }, () => request(`${proxy.url}/x`)))
  t.same(tally(served.map((r) => String(r.status))), { '200': 20 }, 'then served: 20 of 20 (the breaker the outage opened closed with the health checks)')
})

t.test('a pooled connection the app dropped is retried on a fresh one: idempotent requests never see it', async (t) => {
  // The keep-alive race: the app closes a connection just as the proxy reuses it. Here the app
  // resets every connection at its second request, without answering.
  const requestsOn = new WeakMap<object, number>()
  const { up, proxy } = await proxied(
    t,
    fakeUpstream().route('/stale', (req, res) => {
      const n = (requestsOn.get(req.socket) ?? 0) + 1
      requestsOn.set(req.socket, n)
      if (n > 1) req.socket.destroy()
      else res.end('fresh')
    }),
  )
  const gets = []
  for (let i = 0; i < 20; i++) gets.push(await request(`${proxy.url}/stale`))
  t.same(tally(gets.map((r) => `${r.status} ${r.body.toString()}`)), { '200 fresh': 20 }, 'GET: 200 for 20 of 20')
  t.ok(up.seen.length > 20, `the app saw ${up.seen.length} tries for 20 requests: the reused connections were reset`)
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="app",reason="reset"}'), up.seen.length - 20, 'each reset counted as a retry')

  // A POST without an Idempotency-Key may have been acted on: it is not replayed (502), with one.
  await request(`${proxy.url}/stale`) // leaves a pooled connection that has carried one request
  const post = await request(`${proxy.url}/stale`, { method: 'POST', body: 'x' })
  t.equal(post.status, 502, 'a POST on the dropped connection: 502, not replayed')
  t.equal(post.headers['x-sidecar-error'], 'upstream_reset')
  await request(`${proxy.url}/stale`)
  const keyed = await request(`${proxy.url}/stale`, { method: 'POST', body: 'x', headers: { 'idempotency-key': 'k1' } })
  t.equal(keyed.status, 200, 'with an Idempotency-Key it is replayed on a fresh connection')
})

t.test('clients aborting mid-upload and mid-download: app requests cancelled, sockets back to baseline', async (t) => {
  const { up, proxy } = await proxied(
    t,
    fakeUpstream()
      .route('/upload', (req, res) => req.resume().on('end', () => res.end('whole')))
      .route('/download', (_req, res) => {
        res.writeHead(200, { 'content-length': 1_000_000 })
        res.write('x'.repeat(1000)) // and never the rest
      }),
    { backends: [{ name: 'app', url: 'http://127.0.0.1:1', maxConnections: 16 }] }, // the url: replaced by the fixture's app
  )
  const n = 50
  const abort = (path: string, method: string) =>
    new Promise<void>((resolve) => {
      const req = http.request({ host: '127.0.0.1', port: proxy.port, path, method, agent: false, headers: method === 'POST' ? { 'content-length': 10_000 } : {} })
      req.on('error', () => resolve())
      req.on('close', () => resolve())
      if (method === 'POST') {
        req.write('y'.repeat(1000)) // a tenth of the body, then gone
        setTimeout(() => req.destroy(), 50)
      } else {
        req.on('response', (res) => res.once('data', () => req.destroy()))
        req.end()
      }
    })
  const baseline = up.openConnections()
  await Promise.all([...Array.from({ length: n }, () => abort('/upload', 'POST')), ...Array.from({ length: n }, () => abort('/download', 'GET'))])
  // Every request is over once each has its access line; those still queued for one of the 16
  // pool connections when their client went never reached the app at all.
  for (let i = 0; i < 100 && proxy.logs.filter((l) => l.msg === 'request').length < 2 * n; i++) await new Promise((r) => setTimeout(r, 30))
  const lines = proxy.logs.filter((l) => l.msg === 'request')
  t.same(
    tally(lines.map((l) => `${l.status} ${l.error} ${l.incomplete}`)),
    { '499 client_closed true': n, '200 client_closed true': n },
    `access lines: ${n} uploads 499 and ${n} downloads 200 (the status they had), all client_closed and incomplete`,
  )
  const settled = await Promise.race([Promise.all(up.seen.map((s) => s.closed)).then(() => true), new Promise((r) => setTimeout(() => r(false), 3000))])
  t.ok(up.seen.length > 0 && settled, `the app's requests (${up.seen.length} reached it) were each cut when their client went`)
  t.ok(up.openConnections() <= 16 + baseline, `connections to the app: ${up.openConnections()} (pool cap 16)`)
  t.equal(await metric(proxy.adminUrl, 'sidecar_open_connections'), 0, 'client connections open on the proxy: 0')
  t.equal(proxy.logs.filter((l) => l.level === 'warn').length, 0, 'no warning: a client leaving is no bad request')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="bad_request"}'), 0, 'and no refusal counted')
  const after = await request(`${proxy.url}/x`)
  t.equal(after.status, 200, 'and the proxy serves on')
})

t.test('a backend failing its health checks is not blamed for its clients: aborts and stalled bodies stay theirs, and its breaker counts none', async (t) => {
  // The app answers requests but fails every health check: unhealthy, yet still picked (the only
  // backend). Were a client's abort or stalled body taken for the app's failure (upstream_unhealthy),
  // the breaker would count each, and 5 of them reach its volume at any share over 10%.
  const { up, proxy } = await proxied(
    t,
    fakeUpstream()
      .route('/health', (_req, res) => res.writeHead(503).end('down'))
      .route('/upload', (req, res) => req.resume().on('end', () => res.end('whole'))),
    {
      backends: [{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: { path: '/health', intervalMs: 60_000, timeoutMs: 1000 } }],
      limits: { requestBufferBytes: 0, bodyIdleTimeoutMs: 200 }, // bodies stream: the app has the request while its body comes
      circuitBreaker: { volumeThreshold: 5, errorThresholdPercentage: 10 },
    },
  )
  t.equal(proxy.app.status().backends[0]!.health?.healthy, false, 'the backend fails its health checks')
  const breaker = () => metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}')
  const n = 5

  // Clients that go mid-upload, each once the app has its request.
  for (let i = 0; i < n; i++) {
    const req = http.request({ host: '127.0.0.1', port: proxy.port, path: '/upload', method: 'POST', agent: false, headers: { 'content-length': 10_000, 'x-request-id': `abort-${i}` } })
    req.on('error', () => {})
    req.write('y'.repeat(1000))
    await until(() => up.seen.length === i + 1)
    req.destroy()
  }
  const aborted = await Promise.all(Array.from({ length: n }, (_, i) => proxy.accessLine(`abort-${i}`)))
  t.same(tally(aborted.map((l) => String(l.error))), { client_closed: n }, `access lines: client_closed, ${n} of ${n}`)
  t.equal(await breaker(), 0, `breaker closed after ${n} aborts (volumeThreshold ${n})`)

  // Bodies that stop coming, each once the app has its request: 408, the client's fault.
  const stalled = Array.from({ length: n }, (_, i) => raw(proxy.port, `POST /upload HTTP/1.1\r\nHost: app\r\nx-request-id: stall-${i}\r\nConnection: close\r\nContent-Length: 10000\r\n\r\n${'x'.repeat(1000)}`))
  const replies = await Promise.all(stalled)
  t.equal(replies.filter((r) => /^HTTP\/1\.1 408 [^]*x-sidecar-error: request_timeout/i.test(r)).length, n, `408 request_timeout, ${n} of ${n}`)
  t.equal(up.seen.length, 2 * n, 'each stalled body had reached the app')
  const timedOut = await Promise.all(Array.from({ length: n }, (_, i) => proxy.accessLine(`stall-${i}`)))
  t.same(tally(timedOut.map((l) => String(l.error))), { request_timeout: n }, `access lines: request_timeout, ${n} of ${n}`)
  t.equal(await breaker(), 0, `breaker closed after ${2 * n} attempts the clients ended`)
  t.equal(proxy.app.status().backends[0]!.breaker, 'closed', '/status says so too')
  t.equal((await request(`${proxy.url}/after`)).status, 200, 'and the backend is still tried: the breaker let the next request through')
})

t.test('a client that pipelines requests: one at a time reaches the app; when it leaves, every one ends and its slot is freed', async (t) => {
  // Node answers pipelined requests in order, but hands them over at once: each held a backend
  // slot and a connection to the app while its answer queued behind the first's; and a
  // response still queued when its connection died was never closed (a thousand slow readers
  // pipelining three requests each filled every slot in seconds, for good).
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { limits: { maxConcurrentRequests: 3 } })
  const client = net.connect(proxy.port, '127.0.0.1')
  client.on('error', () => {})
  await new Promise<void>((resolve) => client.once('connect', () => resolve()))
  client.write([1, 2, 3].map((i) => `GET /hang HTTP/1.1\r\nHost: app\r\nx-request-id: piped-${i}\r\n\r\n`).join(''))
  await until(() => up.seen.length === 1)
  // a request on another connection is answered: the proxy has read the three by now
  t.equal((await request(`${proxy.url}/`)).status, 200)
  const piped = () => up.seen.filter((s) => String(s.headers['x-request-id']).startsWith('piped-'))
  t.same(
    piped().map((s) => s.headers['x-request-id']),
    ['piped-1'],
    'the first reaches the app; the two behind it wait their turn',
  )
  t.same(proxy.app.status().backends[0]!.inFlight, { active: 1, waiting: 0 }, 'holding one slot')
  client.destroy()
  t.match(await proxy.accessLine('piped-1'), { status: 499, error: 'client_closed' }, 'it ended as its client left')
  await piped()[0]!.closed
  t.pass("the app's request cancelled")
  await until(() => proxy.app.status().backends[0]!.inFlight.active === 0)
  t.equal(piped().length, 1, 'the two behind it never reached the app')
  t.equal((await request(`${proxy.url}/`)).status, 200, 'and the next client is served')
})

t.test('pipelined requests are answered in order, each forwarded once the one before it is answered', async (t) => {
  let now = 0
  let most = 0
  const slowEcho = (req: http.IncomingMessage, res: http.ServerResponse) => {
    most = Math.max(most, ++now)
    req.resume()
    setTimeout(() => {
      now--
      res.end(JSON.stringify({ url: req.url }))
    }, 20)
  }
  const { up, proxy } = await proxied(t, fakeUpstream().route('/p1', slowEcho).route('/p2', slowEcho).route('/p3', slowEcho))
  const answers = await raw(proxy.port, [1, 2, 3].map((i) => `GET /p${i} HTTP/1.1\r\nHost: app\r\n${i === 3 ? 'Connection: close\r\n' : ''}\r\n`).join(''))
  t.same(
    [...answers.matchAll(/"url":"(\/p\d)"/g)].map((m) => m[1]),
    ['/p1', '/p2', '/p3'],
    'three answers, in order',
  )
  t.same(
    up.seen.map((s) => s.url),
    ['/p1', '/p2', '/p3'],
  )
  t.equal(most, 1, 'one after the other: never two at the app at once')
})

t.test('out of file descriptors (ulimit -n 128): refusals, no crash, and recovery', async (t) => {
  const up = await fakeUpstream()
    .route('/slow', (_req, res) => setTimeout(() => res.end('ok'), 1000))
    .listen()
  t.teardown(() => up.close())
  // a pool of 128: the app's connections alone could take every descriptor
  const dir = t.testdir({ 'c.yaml': 'drain:\n  delayMs: 0\nbackends:\n  - name: app\n    url: http://127.0.0.1:1\n    maxConnections: 128\n' })
  const child = runBinary(['--config', `${dir}/c.yaml`, '--plaintext', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url], {}, [
    'bash', '-c', 'ulimit -n 128 && exec "$0" "$@"',
  ])
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const port = Number(new URL(started.listener as string).port)

  // 150 connections held open at once: more descriptors than 128, whatever the timing.
  const held = await Promise.all(
    Array.from({ length: 150 }, () => {
      const socket = net.connect(port, '127.0.0.1')
      socket.on('error', () => {})
      const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(true)))
      return new Promise<{ socket: net.Socket; closed: Promise<boolean> }>((resolve) => socket.once('connect', () => resolve({ socket, closed })))
    }),
  )
  const cut = (await Promise.all(held.map((h) => Promise.race([h.closed, new Promise<boolean>((r) => setTimeout(() => r(false), 1000))])))).filter(Boolean).length
  t.ok(cut > 0, `connections beyond the limit are closed at accept (libuv), not left hanging: ${cut} of 150`)
  for (const h of held) h.socket.destroy()

  // 150 clients at once, each wanting its own connection to the app: more descriptors than 128.
  const during = tally(await Promise.all(Array.from({ length: 150 }, (_, i) => outcome(port, `/slow?${i}`))))
  t.comment(`150 concurrent requests under ulimit -n 128: ${JSON.stringify(during)}`)
  t.same(Object.keys(during).filter((k) => !['200', '503 local_resources_exhausted', 'reset'].includes(k)), [], 'only 200, 503 local_resources_exhausted, or a connection closed at accept')
  t.ok((during['503 local_resources_exhausted'] ?? 0) > 0, 'connections to the app that could not be opened: 503 local_resources_exhausted')

  const after = await Promise.all(Array.from({ length: 20 }, (_, i) => outcome(port, `/after?${i}`)))
  t.same(tally(after), { '200': 20 }, 'descriptors back: 20 of 20 served')
  const line = child.lines.find((l) => l.msg === 'request' && l.error === 'local_resources_exhausted')
  t.match(line, { status: 503 }, 'the access line names the cause')
  child.kill('SIGTERM')
  t.equal(await child.exited, 0, 'and it stops cleanly')
  t.notMatch(child.stderr(), /Error/, 'nothing on stderr')
})
