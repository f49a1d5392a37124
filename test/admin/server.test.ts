import { createHash } from 'node:crypto'
import t from 'tap'
import { isLoopback } from '../../src/admin/server.js'
import { json, metric, request, until } from '../fixtures/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

t.test('probes: /live and /started do not wait for the app; /ready follows its health checks', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url, { backends: [{ name: 'app', url: up.url, healthCheck: { intervalMs: 100, timeoutMs: 100, unhealthyThreshold: 2 } }] })
  t.teardown(() => proxy.close())
  t.same((await json(`${proxy.adminUrl}/live`)).body, { live: true })
  t.equal((await request(`${proxy.adminUrl}/started`)).status, 200)
  await until(() => proxy.logs.some((l) => l.msg === 'backend healthy'))
  const ready = await json<{ ready: boolean; backends: unknown }>(`${proxy.adminUrl}/ready`)
  t.equal(ready.reply.status, 200)
  t.match(ready.body, { ready: true, holding: {}, backends: { app: { healthy: true, reason: 'GET / answered 200' } } })
  t.equal(await metric(proxy.adminUrl, 'sidecar_backend_healthy{backend="app"}'), 1)

  await up.close()
  await until(() => proxy.logs.some((l) => l.msg === 'backend unhealthy'))
  const down = await json<{ ready: boolean; holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(down.reply.status, 503)
  t.equal(down.body.ready, false)
  t.match(down.body.holding, { 'backend:app': /^unhealthy: GET \/ failed: upstream_refused: / }, 'the body says which latch holds and why')
  t.equal(await metric(proxy.adminUrl, 'sidecar_backend_healthy{backend="app"}'), 0)
  t.equal((await request(`${proxy.adminUrl}/started`)).status, 200, '/started does not wait for the app')
  t.equal((await request(`${proxy.adminUrl}/live`)).status, 200, '/live does not depend on the app')
  const reply = await request(`${proxy.url}/`)
  t.equal(reply.status, 503, 'a request to an app known to be down fails fast with 503')
  t.equal(reply.headers['x-sidecar-error'], 'upstream_unhealthy')
})

t.test('upstream down at start: /ready says why, then turns 200 at the first check after the app came up', async (t) => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const clock = fakeClock()
  const proxy = await startProxy(url, { backends: [{ name: 'app', url, healthCheck: { intervalMs: 200, timeoutMs: 100 } }] }, { clock })
  t.teardown(() => proxy.close())
  const before = await json<{ holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(before.reply.status, 503)
  t.match(before.body.holding, { 'backend:app': /^unhealthy: GET \/ failed: upstream_refused: /, }, 'the latch says why: the latest failure')
  const up = await fakeUpstream().listen(port)
  t.teardown(() => up.close())
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 503, 'no check since the app came up: still unready')
  await until(() => clock.timeouts.includes(200)) // the loop has armed its next check
  clock.advance(200)
  await until(() => proxy.logs.some((l) => l.msg === 'backend healthy'))
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200, 'ready at the next check, one interval later')
  t.equal(up.healthChecks(), 1, 'after exactly one check of the live app')
})

t.test('a canary at weight 0 does not gate readiness', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url, {
    backends: [
      { name: 'app', url: up.url, healthCheck: { intervalMs: 100, timeoutMs: 100 } },
      { name: 'canary', url: 'http://127.0.0.1:1', weight: 0, healthCheck: { intervalMs: 100, timeoutMs: 100 } },
    ],
  })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  await until(() => proxy.logs.some((l) => l.msg === 'backend healthy'))
  const ready = await json<{ backends: Record<string, { healthy: boolean }> }>(`${proxy.adminUrl}/ready`)
  t.equal(ready.reply.status, 200)
  t.equal(ready.body.backends.canary?.healthy, false)
})

t.test('/ready names held latches, e.g. while draining', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  await until(() => !proxy.app.readiness.isHeld('backend:app'))
  proxy.app.readiness.hold('draining', 'the proxy is shutting down')
  const res = await json<{ holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(res.reply.status, 503)
  t.same(res.body.holding, { draining: 'the proxy is shutting down' })
  proxy.app.readiness.release('draining')
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200)
})

t.test('/metrics: Prometheus text with the sidecar metrics and process metrics', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  await request(`${proxy.url}/counted`)
  await proxy.accessLine((await request(`${proxy.url}/counted`)).headers['x-request-id'] as string)
  const res = await request(`${proxy.adminUrl}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  const text = res.body.toString()
  t.match(text, /^sidecar_requests_total\{backend="app",method="GET",code="200",route="default"\} 2$/m)
  t.match(text, /^sidecar_request_duration_seconds_count\{backend="app",route="default"\} 2$/m)
  t.match(text, /^sidecar_upstream_attempts_total\{backend="app",result="2xx"\} 2$/m)
  t.match(text, /^sidecar_open_connections \d+$/m)
  t.match(text, /^process_cpu_user_seconds_total /m)
  t.match(text, /^nodejs_eventloop_lag_seconds /m)
})

t.test('unknown paths 404, wrong methods 405', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  const missing = await json<{ paths: string[] }>(`${proxy.adminUrl}/nope`)
  t.equal(missing.reply.status, 404)
  t.same(missing.body.paths, ['/', '/live', '/started', '/ready', '/config', '/status', '/metrics', '/drain', '/quitquitquit'])
  const post = await request(`${proxy.adminUrl}/live`, { method: 'POST' })
  t.equal(post.status, 405)
  t.equal(post.headers.allow, 'GET, HEAD')
  t.equal((await request(`${proxy.adminUrl}/live?x=1`, { method: 'HEAD' })).status, 200)
})

t.test('POST /drain and POST /quitquitquit ask for a stop; other methods are refused', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const asked: Array<[string, boolean]> = []
  const proxy = await startProxy(up.url, {}, { requestStop: (reason, immediate) => asked.push([reason, immediate]) })
  t.teardown(() => proxy.close())
  const get = await request(`${proxy.adminUrl}/drain`)
  t.equal(get.status, 405)
  t.equal(get.headers.allow, 'POST')
  t.same(asked, [], 'a GET changes nothing')
  t.equal((await request(`${proxy.adminUrl}/drain`, { method: 'POST' })).status, 202)
  t.equal((await request(`${proxy.adminUrl}/quitquitquit`, { method: 'POST' })).status, 202)
  t.same(asked, [
    ['POST /drain', false],
    ['POST /quitquitquit', true],
  ])
  // What any open tab could send with fetch(..., { method: 'POST', mode: 'no-cors' }).
  for (const headers of [{ origin: 'https://evil.example' }, { origin: 'null' }, { 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-origin' }]) {
    const reply = await json<{ reason: string }>(`${proxy.adminUrl}/quitquitquit`, { method: 'POST', headers })
    t.equal(reply.reply.status, 403, JSON.stringify(headers))
    t.equal(reply.body.reason, 'not from a web page')
  }
  t.equal(asked.length, 2, 'no web page stopped the proxy')
})

t.test('only loopback clients may stop the proxy', async (t) => {
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) t.ok(isLoopback(a), a)
  for (const a of ['10.0.0.5', '::ffff:10.0.0.5', 'fe80::1', undefined]) t.notOk(isLoopback(a), String(a))
})

t.test('GET /config: the config in force with its version, file paths but never key material', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const { server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const proxy = await startProxy(up.url, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  t.teardown(() => proxy.close())
  const reply = await json<{ version: string; pendingRestart: string[]; config: { listener: { tls: { keyFile: string } } } }>(`${proxy.adminUrl}/config`)
  t.equal(reply.reply.status, 200)
  t.equal(reply.body.version, proxy.app.config().version)
  t.same(reply.body.pendingRestart, [])
  t.equal(reply.body.config.listener.tls.keyFile, `${dir}/tls.key`, 'the path is shown')
  t.notMatch(reply.reply.body.toString(), /PRIVATE KEY/, 'the key itself never is')
  t.notMatch(reply.reply.body.toString(), server.key.split('\n')[1]!)
})

t.test('GET /status: weights, health, breaker, in-flight and the share answered in the last minute', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const { server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const down = `http://127.0.0.1:${await freePort()}`
  const proxy = await startProxy(up.url, {
    listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } },
    backends: [{ name: 'app', url: up.url, weight: 3 }, { name: 'canary', url: down, weight: 1, gatesReadiness: false }],
  })
  t.teardown(() => proxy.close())
  const status = await json<Record<string, unknown>>(`${proxy.adminUrl}/status`)
  t.equal(status.reply.status, 200)
  t.match(status.body, {
    ready: true,
    config: { version: proxy.app.config().version },
    backends: [
      { name: 'app', weight: 3, weightPercent: 75, gatesReadiness: true, breaker: 'closed', inFlight: { active: 0, waiting: 0 }, connections: Number, health: { healthy: true } },
      { name: 'canary', weight: 1, weightPercent: 25, gatesReadiness: false, breaker: 'closed', health: { healthy: false } },
    ],
    certificate: { subject: /CN=localhost/, notAfter: String },
  })
  t.equal((status.body.series as unknown[]).length, 30, 'five minutes of 10 s buckets for a chart')
})

t.test('GET /status: retries per backend and reason, rejections per reason, over the last minute', async (t) => {
  const up = await fakeUpstream().seq('/flaky', 503, 200).listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  t.equal((await request(`${proxy.url}/flaky`)).status, 200, 'the 503 was retried')
  const tooMany = Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`x-h${i}`, '1']))
  t.equal((await request(`${proxy.url}/`, { headers: tooMany })).status, 431)
  const status = await json<Record<string, unknown>>(`${proxy.adminUrl}/status`)
  t.same(status.body.retries, { windowSeconds: 60, total: 1, byBackend: { app: { 'gateway-error': 1 } }, budgetExhausted: 0 })
  t.same(status.body.rejections, { windowSeconds: 60, total: 1, byReason: { headers_too_large: 1 } })
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="app",reason="gateway-error"}'), 1, 'Prometheus counts them too')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="headers_too_large"}'), 1)
})

t.test('GET /: the status page, locked down by its headers; the listener still forwards / to the app', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  const page = await request(`${proxy.adminUrl}/`)
  t.equal(page.status, 200)
  t.match(page.headers, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  })
  const html = page.body.toString()
  const csp = page.headers['content-security-policy'] as string
  t.match(csp, /^default-src 'none'; /)
  t.match(csp, /; connect-src 'self'; /)
  const hash = (tag: string) => {
    const body = new RegExp(`<${tag}>([^]*?)</${tag}>`).exec(html)![1]!
    return `'sha256-${createHash('sha256').update(body).digest('base64')}'`
  }
  t.ok(csp.includes(`script-src ${hash('script')};`), 'the inline script is allowed by its hash, and nothing else')
  t.ok(csp.includes(`style-src ${hash('style')};`), 'the inline style too')
  t.notMatch(html, /(src|href)="(https?:)?\/\//, 'nothing is loaded from elsewhere')
  t.notMatch(html, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/, 'data never goes in as HTML')
  const head = await request(`${proxy.adminUrl}/`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.body.length, 0)
  t.equal(head.headers['content-security-policy'], csp)
  const forwarded = await json<{ url: string }>(`${proxy.url}/`)
  t.equal(forwarded.body.url, '/', "the proxy's own listener sends / to the app")
  t.equal(up.seen.length, 1)
})
