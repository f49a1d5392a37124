// Routes through the real proxy on loopback: per-path body caps, timeouts, retries and weights,
// direct answers that no spelling of the path walks around, the route in the access line, the
// metrics and /status, and a reload that changes the table live.
import { writeFileSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { fakeClock } from '../fixtures/clock.js'
import { json, metric, request } from '../fixtures/client.js'
import { startProxy, startProxyFromFile } from '../fixtures/proxy.js'
import { fakeUpstream, type RunningUpstream } from '../fixtures/upstream.js'

/** A request with the path exactly as given (a URL string would have its dot segments resolved). */
function send(port: number, path: string, opts: { method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer } = {}) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

async function upstream(t: Test, builder = fakeUpstream()): Promise<RunningUpstream> {
  const up = await builder.listen()
  t.teardown(() => up.close())
  return up
}

t.test('an upload route with a larger body cap passes what the default refuses (413)', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    limits: { maxBodyBytes: 1024 },
    routes: [{ name: 'upload', match: { pathPrefix: '/upload/', methods: ['POST'] }, limits: { maxBodyBytes: 1024 * 1024 } }],
  })
  t.teardown(() => proxy.close())
  const body = Buffer.alloc(100 * 1024, 1)
  const upload = await send(proxy.port, '/upload/file', { method: 'POST', body })
  t.equal(upload.status, 200)
  t.equal(JSON.parse(upload.body).bodyBytes, body.length, 'the whole body reached the app')
  const other = await send(proxy.port, '/other', { method: 'POST', body })
  t.equal(other.status, 413)
  t.equal(other.headers['x-sidecar-error'], 'body_too_large')
  t.equal(up.seen.length, 1, 'the refused one never reached the app')
})

t.test('a route with no timeout outlives the default one, which answers 504', async (t) => {
  const up = await upstream(
    t,
    // 1.5 s: past the default's 200 ms by more than undici's coarse timers (about 1 s), so that
    // a pool-wide headers timeout would show
    fakeUpstream().route('/poll', (_req, res) => void setTimeout(() => res.end('late news'), 1500)),
  )
  // the long route matches by header so that both requests ask the same slow path
  const proxy = await startProxy(up.url, {
    limits: { requestTimeoutMs: 200 },
    routes: [
      { name: 'long-poll', match: { path: '/poll', headers: { 'x-wait': 'long' } }, timeoutMs: 0 },
      { name: 'slower', match: { path: '/poll', headers: { 'x-wait': 'longer' } }, timeoutMs: 3000 },
    ],
  })
  t.teardown(() => proxy.close())
  const [none, longer, fallback] = await Promise.all([
    send(proxy.port, '/poll', { headers: { 'x-wait': 'long' } }),
    send(proxy.port, '/poll', { headers: { 'x-wait': 'longer' } }),
    send(proxy.port, '/poll'),
  ])
  t.equal(none.status, 200, 'timeoutMs 0: no deadline')
  t.equal(none.body, 'late news')
  t.equal(longer.status, 200, 'timeoutMs above the default: its own deadline')
  t.equal(fallback.status, 504, 'the default route keeps limits.requestTimeoutMs')
  t.equal(fallback.headers['x-sidecar-error'], 'upstream_timeout')
})

t.test('a payments route with one attempt never replays a POST, Idempotency-Key or not', async (t) => {
  let seenPay = 0
  let seenOther = 0
  const reset = (count: () => void) => (req: http.IncomingMessage) => {
    count()
    req.resume()
    req.socket.destroy() // the app took the request and dropped the connection
  }
  const up = await upstream(
    t,
    fakeUpstream()
      .route('/pay', reset(() => seenPay++))
      .route('/other', reset(() => seenOther++)),
  )
  const proxy = await startProxy(up.url, {
    retry: { attempts: 3, backoff: { baseMs: 1, maxMs: 2 } },
    routes: [{ name: 'payments', match: { pathPrefix: '/pay', methods: ['POST'] }, retry: { attempts: 1 } }],
  })
  t.teardown(() => proxy.close())
  const headers = { 'idempotency-key': 'k-1', 'content-type': 'application/json' }
  const paid = await send(proxy.port, '/pay', { method: 'POST', headers, body: Buffer.from('{"amount":1}') })
  t.equal(paid.status, 502)
  t.equal(seenPay, 1, 'the app saw the payment once')
  await send(proxy.port, '/other', { method: 'POST', headers, body: Buffer.from('{}') })
  t.equal(seenOther, 3, 'the default route, with the same key, tried 3 times (the route made the difference)')
})

t.test('/admin never reaches the canary at 50/50, override header or not', async (t) => {
  const app = await upstream(t)
  const canary = await upstream(t)
  const check = { intervalMs: 200, timeoutMs: 100 }
  const proxy = await startProxy(app.url, {
    backends: [
      { name: 'app', url: app.url, weight: 50, healthCheck: check },
      { name: 'canary', url: canary.url, weight: 50, healthCheck: check },
    ],
    routes: [{ name: 'admin', match: { pathPrefix: '/admin/' }, weights: { app: 1 } }],
  })
  t.teardown(() => proxy.close())
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())
  const statuses = await Promise.all(
    Array.from({ length: 1000 }, (_, i) => request(`${proxy.url}/admin/page${i}`, { agent, headers: i % 10 === 0 ? { 'x-canary': 'always' } : {} }).then((r) => r.status)),
  )
  t.ok(statuses.every((s) => s === 200), 'all answered')
  t.equal(canary.seen.filter((s) => s.url.startsWith('/admin/')).length, 0, 'the canary saw no /admin request')
  t.equal(app.seen.length, 1000)
  // the rest of the site still splits
  await Promise.all(Array.from({ length: 200 }, () => request(`${proxy.url}/shop`, { agent })))
  t.ok(canary.seen.length > 50, `the default route still reaches the canary (${canary.seen.length} of 200)`)
})

t.test('a direct route answers itself: no spelling of the path reaches the app', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    routes: [{ name: 'internal', match: { pathPrefix: '/internal/' }, direct: { status: 404, body: 'not here\n' } }],
  })
  t.teardown(() => proxy.close())
  for (const path of ['/internal/x', '/%69nternal/x', '//internal/x', '/a/../internal/x', '/%2e%2e/internal/secrets?x=1']) {
    const reply = await send(proxy.port, path)
    t.equal(reply.status, 404, path)
    t.equal(reply.body, 'not here\n')
    t.equal(reply.headers['x-sidecar-error'], undefined, 'an answer, not an error')
    t.ok(reply.headers['x-request-id'])
  }
  const posted = await send(proxy.port, '/internal/x', { method: 'POST', body: Buffer.alloc(10_000) })
  t.equal(posted.status, 404, 'a body makes no difference')
  t.equal(up.seen.length, 0, 'the app saw none of them')
  t.equal((await send(proxy.port, '/public')).status, 200, 'other paths go through')
  t.equal(up.seen.length, 1)
})

t.test('the route shows in the access line, the metrics and /status', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    routes: [
      { name: 'internal', match: { pathPrefix: '/internal/' }, direct: { status: 404 } },
      { name: 'api', match: { pathPrefix: '/api/' } },
    ],
  })
  t.teardown(() => proxy.close())
  const api = await request(`${proxy.url}/api/x`, { headers: { 'x-request-id': 'r-api' } })
  const other = await request(`${proxy.url}/x`, { headers: { 'x-request-id': 'r-other' } })
  const internal = await request(`${proxy.url}/internal/x`, { headers: { 'x-request-id': 'r-internal' } })
  t.same([api.status, other.status, internal.status], [200, 200, 404])
  t.match(await proxy.accessLine('r-api'), { route: 'api', backend: 'app', status: 200 })
  t.match(await proxy.accessLine('r-other'), { route: 'default', backend: 'app' })
  t.match(await proxy.accessLine('r-internal'), { route: 'internal', backend: 'none', status: 404 })
  t.equal(await metric(proxy.adminUrl, 'sidecar_requests_total{backend="app",method="GET",code="200",route="api"}'), 1)
  t.equal(await metric(proxy.adminUrl, 'sidecar_requests_total{backend="none",method="GET",code="404",route="internal"}'), 1)
  t.equal(await metric(proxy.adminUrl, 'sidecar_request_duration_seconds_count{backend="app",route="default"}'), 1)
  const { body } = await json<{ routes: Array<{ name: string; match: object; lastMinute: { requests: number } }> }>(`${proxy.adminUrl}/status`)
  t.same(
    body.routes.map((r) => [r.name, r.match, r.lastMinute.requests]),
    [
      ['internal', { pathPrefix: '/internal/' }, 1],
      ['api', { pathPrefix: '/api/' }, 1],
      ['default', {}, 1],
    ],
  )
})

t.test('a reload changes the route table live', async (t) => {
  const up = await upstream(t)
  const file = join(t.testdir(), 'config.yaml')
  const yaml = (routes: string) => `backends:\n  - name: app\n    url: ${up.url}\n${routes}`
  writeFileSync(file, yaml(''))
  const proxy = await startProxyFromFile(file)
  t.teardown(() => proxy.close())
  t.equal((await request(`${proxy.url}/internal/x`)).status, 200, 'before: no route, the app answers')
  writeFileSync(file, yaml('routes:\n  - name: internal\n    match: { pathPrefix: /internal/ }\n    direct: { status: 404 }\n'))
  t.match(await proxy.app.reload('test'), { result: 'success' })
  t.equal((await request(`${proxy.url}/internal/x`)).status, 404, 'after: the direct route answers')
  t.equal(up.seen.length, 1)
  writeFileSync(file, yaml('routes:\n  - name: internal\n    match: { pathRegex: "(a+)+" }\n'))
  const bad = await proxy.app.reload('test')
  t.match(bad, { result: 'failure', problems: [/^routes\[0\]\.match\.pathRegex: a quantified group holds a quantifier/] })
  t.equal((await request(`${proxy.url}/internal/x`)).status, 404, 'a bad table keeps the last good one')
})

t.test('a login rate limit: 429 with Retry-After past the burst, served again after the refill', async (t) => {
  const up = await upstream(t)
  const clock = fakeClock()
  const proxy = await startProxy(
    up.url,
    { routes: [{ name: 'login', match: { path: '/login', methods: ['POST'] }, rateLimit: { requestsPerSecond: 0.5, burst: 3, key: 'client' } }] },
    { clock },
  )
  t.teardown(() => proxy.close())
  const login = () => send(proxy.port, '/login', { method: 'POST', body: Buffer.from('user=a') })
  const first = [await login(), await login(), await login(), await login()]
  t.same(first.map((r) => r.status), [200, 200, 200, 429], 'the burst, then 429')
  const limited = first[3]!
  t.equal(limited.headers['x-sidecar-error'], 'rate_limited')
  t.equal(limited.headers['retry-after'], '2', 'a token every 2 s at 0.5/s')
  t.equal((await send(proxy.port, '/elsewhere', { method: 'POST' })).status, 200, 'other routes are not limited')
  t.equal(up.seen.filter((s) => s.url === '/login').length, 3, 'the refused one never reached the app')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="rate_limited"}'), 1)
  clock.advance(1999)
  t.equal((await login()).status, 429, 'not yet')
  clock.advance(1)
  t.equal((await login()).status, 200, 'one token after 2 s')
  t.equal((await login()).status, 429)
})
