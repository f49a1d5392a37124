import t from 'tap'
import { json, request } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

t.test('probes: /live, /started, /ready follow the listener and the backend', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  t.same((await json(`${proxy.adminUrl}/live`)).body, { live: true })
  t.equal((await request(`${proxy.adminUrl}/started`)).status, 200)
  const ready = await json<{ ready: boolean; backends: unknown }>(`${proxy.adminUrl}/ready`)
  t.equal(ready.reply.status, 200)
  t.match(ready.body, { ready: true, holding: {}, backends: { app: { ok: true, status: 200 } } })

  await up.close()
  const down = await json<{ ready: boolean; holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(down.reply.status, 503)
  t.equal(down.body.ready, false)
  t.match(down.body.holding, { 'backend:app': /^upstream_refused: / }, 'the body says which latch holds and why')
  t.equal((await request(`${proxy.adminUrl}/started`)).status, 200, '/started does not wait for the app')
  t.equal((await request(`${proxy.adminUrl}/live`)).status, 200, '/live does not depend on the app')
})

t.test('/ready names held latches, e.g. while stopping', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  proxy.app.readiness.hold('stopping', 'the proxy is shutting down')
  const res = await json<{ holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(res.reply.status, 503)
  t.same(res.body.holding, { stopping: 'the proxy is shutting down' })
  proxy.app.readiness.release('stopping')
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
  t.match(text, /^sidecar_requests_total\{backend="app",method="GET",code="200"\} 2$/m)
  t.match(text, /^sidecar_request_duration_seconds_count\{backend="app"\} 2$/m)
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
  t.same(missing.body.paths, ['/live', '/started', '/ready', '/metrics'])
  const post = await request(`${proxy.adminUrl}/live`, { method: 'POST' })
  t.equal(post.status, 405)
  t.equal(post.headers.allow, 'GET, HEAD')
  t.equal((await request(`${proxy.adminUrl}/live?x=1`, { method: 'HEAD' })).status, 200)
})
