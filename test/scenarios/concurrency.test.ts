// A concurrency limit between the sidecar and the app (backends[].concurrency), through the real
// proxy on loopback: requests past it wait in line and are answered 503 concurrency_limited
// (gRPC: RESOURCE_EXHAUSTED, to a real @grpc/grpc-js client) after maxWaitMs; the app never sees
// more at once, retries included; /status and /metrics show the limit, in flight and queued.
import t from 'tap'
import { json, metric, request, until } from '../fixtures/client.js'
import { ECHO, echoClient, grpc, grpcApp, unary } from '../fixtures/grpc.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

t.test('a fixed limit: the app gets at most N at once; the rest wait maxWaitMs, then 503 concurrency_limited', async (t) => {
  const releases: Array<() => void> = []
  let atOnce = 0
  let most = 0
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/work', (_req, res) => {
      most = Math.max(most, ++atOnce)
      releases.push(() => {
        atOnce--
        res.end('done')
      })
    }),
    { backends: [{ name: 'app', url: 'http://127.0.0.1:1', concurrency: { fixed: 2, maxWaitMs: 300 } }] },
  )
  const replies = Array.from({ length: 4 }, () => request(`${proxy.url}/work`))
  await until(() => releases.length === 2)
  const status = await json<{ backends: Array<{ concurrency: { limit: number }; inFlight: { active: number; waiting: number } }> }>(`${proxy.adminUrl}/status`)
  t.match(status.body.backends[0], { concurrency: { limit: 2 }, inFlight: { active: 2, waiting: 2 } }, '/status: the limit, two in flight, two in line')
  t.equal(await metric(proxy.adminUrl, 'sidecar_concurrency_limit{backend="app"}'), 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_requests_in_flight{backend="app"}'), 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_requests_queued{backend="app"}'), 2)

  const [third, fourth] = await Promise.all([replies[2]!, replies[3]!])
  for (const reply of [third, fourth]) {
    t.equal(reply.status, 503)
    t.equal(reply.headers['x-sidecar-error'], 'concurrency_limited')
    t.equal(reply.headers['retry-after'], '1')
  }
  t.equal(most, 2, 'the app never had more than the limit at once')
  for (const release of releases.splice(0)) release()
  t.same((await Promise.all(replies.slice(0, 2))).map((r) => r.status), [200, 200])
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="concurrency_limited"}'), 2)
  const line = await proxy.accessLine(third.headers['x-request-id'] as string)
  t.match(line, { status: 503, error: 'concurrency_limited', backend: 'app' })
})

t.test('retries draw from the same limit: with a limit of 1, a retried request never puts two at the app', async (t) => {
  let atOnce = 0
  let most = 0
  let calls = 0
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/flaky', (req, res) => {
      most = Math.max(most, ++atOnce)
      calls++
      const status = req.headers['x-sidecar-attempt'] === '1' ? 503 : 200 // every first try fails, its retry succeeds
      setTimeout(() => {
        atOnce--
        res.writeHead(status).end()
      }, 20)
    }),
    { backends: [{ name: 'app', url: 'http://127.0.0.1:1', concurrency: { fixed: 1, maxWaitMs: 5000 } }] },
  )
  const replies = await Promise.all(Array.from({ length: 5 }, () => request(`${proxy.url}/flaky`)))
  t.same(replies.map((r) => r.status), [200, 200, 200, 200, 200], 'each answered after its retry')
  t.equal(calls, 10, 'two tries each')
  t.equal(most, 1, 'never two at the app at once')
})

t.test('gRPC: a call past the limit gets RESOURCE_EXHAUSTED, which a real gRPC client reads', async (t) => {
  const app = await grpcApp(t)
  const proxy = await startProxy(app.url, {
    backends: [{ name: 'app', url: app.url, protocol: 'h2c', healthCheck: { grpc: { service: '' }, intervalMs: 200, timeoutMs: 200 }, concurrency: { fixed: 1, maxWaitMs: 200 } }],
  })
  t.teardown(() => proxy.close())
  const client = echoClient(t, `127.0.0.1:${proxy.port}`)
  const hanging = unary(client, 'hang', Buffer.from('holds the only slot'), new grpc.Metadata(), 2000)
  await until(() => app.calls.includes(ECHO.hang.path))
  const limited = await unary(client, 'unary', Buffer.from('x'))
  t.equal(limited.error?.code, grpc.status.RESOURCE_EXHAUSTED)
  t.equal(limited.error?.metadata.get('x-sidecar-error')[0], 'concurrency_limited')
  await hanging
})
