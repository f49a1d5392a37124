// Fault injection through the real proxy on loopback: the shares hold (within 4 standard
// deviations of the binomial), an abort reaches no app and is never retried, a gRPC request
// gets a gRPC-shaped abort, a client leaving during a delay leaves the app untouched, header
// control works only when on (the headers never reach the app), and routes override the top level.
import http from 'node:http'
import t from 'tap'
import type { Test } from 'tap'
import { metric, request } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream, type Echo, type RunningUpstream } from '../fixtures/upstream.js'

async function upstream(t: Test, builder = fakeUpstream()): Promise<RunningUpstream> {
  const up = await builder.listen()
  t.teardown(() => up.close())
  return up
}

/** |observed - n p| within 4 standard deviations of the binomial. */
function withinBinomial(t: Test, observed: number, n: number, percent: number, what: string): void {
  const p = percent / 100
  const sd = Math.sqrt(n * p * (1 - p))
  t.ok(Math.abs(observed - n * p) <= 4 * sd, `${what}: ${observed} of ${n}, expected ${n * p} +- ${Math.ceil(4 * sd)}`)
}

t.test('abort: the share holds, aborted requests reach no app and are never retried', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    retry: { attempts: 3, retryOn: ['gateway-error', 'connect-failure'], backoff: { baseMs: 1, maxMs: 2 }, budget: { minPerSecond: 10_000 } },
    fault: { abort: { status: 503, percent: 30 } },
  })
  t.teardown(() => proxy.close())
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  const n = 600
  const replies = await Promise.all(Array.from({ length: n }, (_, i) => request(`${proxy.url}/r${i}`, { agent })))
  const aborted = replies.filter((r) => r.status === 503)
  t.ok(aborted.every((r) => r.headers['x-sidecar-error'] === 'fault_injected'), 'every 503 is the injected one')
  t.equal(aborted.length + replies.filter((r) => r.status === 200).length, n)
  withinBinomial(t, aborted.length, n, 30, 'aborted')
  t.equal(up.seen.length, n - aborted.length, 'the app saw only the others, each once: no abort was retried')
  t.equal(await metric(proxy.adminUrl, 'sidecar_faults_injected_total{route="default",kind="abort"}'), aborted.length)
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="app",reason="gateway-error"}'), 0)
  t.same(JSON.parse(aborted[0]!.body.toString()).error, 'fault_injected')
})

t.test('delay: the share holds (real clock, 1 ms delays), delayed requests still reach the app', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, { fault: { delay: { ms: 1, percent: 12.5 } } })
  t.teardown(() => proxy.close())
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  const n = 600
  const replies = await Promise.all(Array.from({ length: n }, () => request(`${proxy.url}/d`, { agent })))
  t.ok(replies.every((r) => r.status === 200))
  t.equal(up.seen.length, n)
  const delayed = await metric(proxy.adminUrl, 'sidecar_faults_injected_total{route="default",kind="delay"}')
  withinBinomial(t, delayed, n, 12.5, 'delayed')
})

t.test('a gRPC request gets a gRPC-shaped abort with the configured grpcStatus', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, { fault: { abort: { status: 503, grpcStatus: 8, percent: 100 } } })
  t.teardown(() => proxy.close())
  const reply = await request(`${proxy.url}/echo.Echo/Unary`, { method: 'POST', headers: { 'content-type': 'application/grpc', te: 'trailers' }, body: Buffer.alloc(5) })
  t.equal(reply.status, 200, 'gRPC: HTTP 200, the status in grpc-status')
  t.equal(reply.headers['grpc-status'], '8')
  t.equal(reply.headers['x-sidecar-error'], 'fault_injected')
  const plain = await request(`${proxy.url}/x`)
  t.equal(plain.status, 503)
  t.equal(up.seen.length, 0)
})

t.test('a client leaving during a delay: the app never sees the request', async (t) => {
  const up = await upstream(t)
  // one connection to the app: requests reach it in the order they are forwarded
  const proxy = await startProxy(up.url, { backends: [{ name: 'app', url: up.url, maxConnections: 1 }], fault: { delay: { ms: 400, percent: 100 } } })
  t.teardown(() => proxy.close())
  const req = http.request(`${proxy.url}/slow`, { agent: false })
  req.on('error', () => {})
  req.end()
  await new Promise((r) => setTimeout(r, 100))
  req.destroy()
  const line = (await new Promise<Record<string, unknown>>((resolve) => {
    const poll = () => {
      const l = proxy.logs.find((x) => x.msg === 'request')
      if (l) resolve(l)
      else setTimeout(poll, 20)
    }
    poll()
  }))
  t.equal(line.error, 'client_closed')
  // a request delayed after it ends its delay after it, and reaches the app after it if it went on
  t.equal((await request(`${proxy.url}/after`)).status, 200)
  t.same(up.seen.map((s) => s.url), ['/after'], 'cancelled with the client: nothing forwarded after the delay')
})

t.test('header control: honoured only when on, and the headers never reach the app', async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    routes: [{ name: 'controlled', match: { pathPrefix: '/ctl/' }, fault: { headerControl: true } }],
  })
  t.teardown(() => proxy.close())
  const ask = { 'x-sidecar-fault-abort': '418', 'x-sidecar-fault-delay-ms': '5' }
  const off = await request(`${proxy.url}/plain`, { headers: ask })
  t.equal(off.status, 200, 'no fault configured on the default route: the headers ask nothing')
  const echoed = JSON.parse(off.body.toString()) as Echo
  t.notOk('x-sidecar-fault-abort' in echoed.headers, 'not passed to the app')
  t.notOk('x-sidecar-fault-delay-ms' in echoed.headers)
  const on = await request(`${proxy.url}/ctl/x`, { headers: ask })
  t.equal(on.status, 418)
  t.equal(on.headers['x-sidecar-error'], 'fault_injected')
  const delayed = await request(`${proxy.url}/ctl/y`, { headers: { 'x-sidecar-fault-delay-ms': '5' } })
  t.equal(delayed.status, 200)
  const echoedOn = JSON.parse(delayed.body.toString()) as Echo
  t.notOk('x-sidecar-fault-delay-ms' in echoedOn.headers, 'not passed to the app with header control on either')
  t.equal(up.seen.length, 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_faults_injected_total{route="controlled",kind="delay"}'), 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_faults_injected_total{route="controlled",kind="abort"}'), 1)
})

t.test("a route's fault replaces the top level's (false: none), and /status and /config show them", async (t) => {
  const up = await upstream(t)
  const proxy = await startProxy(up.url, {
    fault: { abort: { status: 503, percent: 100 } },
    routes: [
      { name: 'healthz', match: { path: '/healthz' }, fault: false },
      { name: 'teapot', match: { pathPrefix: '/tea' }, fault: { abort: { status: 418, percent: 100 } } },
    ],
  })
  t.teardown(() => proxy.close())
  t.equal((await request(`${proxy.url}/healthz`)).status, 200)
  t.equal((await request(`${proxy.url}/tea/pot`)).status, 418)
  t.equal((await request(`${proxy.url}/other`)).status, 503)
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { routes: Array<{ name: string; fault: null | { abort: { status: number }; injected: Record<string, number> } }> }
  const byName = Object.fromEntries(status.routes.map((r) => [r.name, r.fault]))
  t.equal(byName.healthz, null)
  t.equal(byName.teapot!.abort.status, 418)
  t.same(byName.teapot!.injected, { abort: 1 })
  t.same(byName.default!.injected, { abort: 1 })
  const config = JSON.parse((await request(`${proxy.adminUrl}/config`)).body.toString()) as { config: { fault: unknown } }
  t.same(config.config.fault, { abort: { status: 503, percent: 100 }, headerControl: false })
})
