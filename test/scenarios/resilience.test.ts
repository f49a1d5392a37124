// Retries, circuit breaking and overload through the real proxy, against a scripted app.
import { createHash } from 'node:crypto'
import t from 'tap'
import { json, metric, request, until } from '../fixtures/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { echo, fakeUpstream } from '../fixtures/upstream.js'

const fast = { backoff: { baseMs: 1, maxMs: 5 } }

t.test('503, 503, 200: the client gets 200 after three attempts, each numbered for the app', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().seq('/flaky', 503, 503, 200), { retry: { attempts: 3, ...fast } })
  const reply = await request(`${proxy.url}/flaky`)
  t.equal(reply.status, 200)
  t.same(up.seen.map((s) => s.headers['x-sidecar-attempt']), ['1', '2', '3'])
  t.match(await proxy.accessLine(reply.headers['x-request-id'] as string), { status: 200, attempts: 3 })
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="app",reason="gateway-error"}'), 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_attempts_total{backend="app",result="5xx"}'), 2)
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_attempts_total{backend="app",result="2xx"}'), 1)
})

t.test('POST is not retried without an Idempotency-Key, and is retried with one', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().seq('/orders', 503, 503, 201), { retry: fast })
  const plain = await request(`${proxy.url}/orders`, { method: 'POST', body: 'item=1' })
  t.equal(plain.status, 503)
  t.equal(up.seen.length, 1)
  const keyed = await request(`${proxy.url}/orders`, { method: 'POST', body: 'item=1', headers: { 'idempotency-key': 'abc' } })
  t.equal(keyed.status, 201)
  t.equal(up.seen.length, 3)
})

t.test('a body over maxReplayBytes is delivered intact and not retried', async (t) => {
  let calls = 0
  let received = ''
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/upload', (req, res) => {
      calls++
      const hash = createHash('sha256')
      req.on('data', (c: Buffer) => hash.update(c))
      req.on('end', () => {
        received = hash.digest('hex')
        res.writeHead(503).end()
      })
    }),
    { retry: { maxReplayBytes: 1024, ...fast } },
  )
  const body = Buffer.alloc(100_000, 7)
  const reply = await request(`${proxy.url}/upload`, { method: 'PUT', body })
  t.equal(reply.status, 503)
  t.equal(calls, 1, 'not retried')
  t.equal(received, createHash('sha256').update(body).digest('hex'), 'the app got the whole body')
  const small = await json<{ bodyBytes: number }>(`${proxy.url}/echo`, { method: 'PUT', body: Buffer.alloc(500, 1) })
  t.equal(small.body.bodyBytes, 500, 'a body under the cap is forwarded whole as well')
})

t.test('a connection reset after the response headers is not retried', async (t) => {
  const { up, proxy } = await proxied(
    t,
    fakeUpstream().route('/cut', (_req, res) => {
      res.writeHead(200, { 'content-length': 100 })
      res.write('partial')
      setTimeout(() => res.socket?.destroy(), 20)
    }),
    { retry: fast },
  )
  const outcome = await request(`${proxy.url}/cut`).then(
    () => 'complete',
    (err: Error) => err.message,
  )
  t.equal(outcome, 'aborted', 'the client sees the break')
  t.equal(up.seen.length, 1, 'one attempt: bytes had gone to the client')
})

t.test('per-try timeouts: 504 after all attempts, within attempts x timeout plus slack', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { retry: { attempts: 3, perTryTimeoutMs: 200, ...fast } })
  const started = Date.now()
  const reply = await request(`${proxy.url}/hang`)
  const took = Date.now() - started
  t.equal(reply.status, 504)
  t.equal(reply.headers['x-sidecar-error'], 'upstream_timeout')
  t.equal(up.seen.length, 3)
  t.ok(took >= 600 && took < 600 + 1000, `took ${took} ms for 3 x 200 ms`)
})

t.test('the retry budget holds under a 100% failing upstream', async (t) => {
  const ratio = 0.2
  const minPerSecond = 2
  const windowMs = 10_000
  const { up, proxy } = await proxied(t, fakeUpstream().seq('/down', 503), {
    retry: { attempts: 3, ...fast, budget: { ratio, minPerSecond, windowMs } },
    circuitBreaker: { errorThresholdPercentage: 100 }, // never opens: the budget alone must hold
  })
  let requests = 0
  const until = Date.now() + 2000
  const client = async () => {
    while (Date.now() < until) {
      await request(`${proxy.url}/down`)
      requests++
    }
  }
  await Promise.all(Array.from({ length: 4 }, client))
  const bound = (1 + ratio) * requests + (minPerSecond * windowMs) / 1000
  t.ok(requests > 50, `${requests} requests made`)
  t.ok(up.seen.length <= bound, `${up.seen.length} attempts <= (1 + ${ratio}) x ${requests} + ${(minPerSecond * windowMs) / 1000}`)
  t.ok(up.seen.length > requests, 'some retries were still made')
  t.ok((await metric(proxy.adminUrl, 'sidecar_retry_budget_exhausted_total')) > 0, 'and the refused ones counted')
})

t.test('the breaker opens, the app sees nothing while it is open, one probe closes it', async (t) => {
  let failing = true
  // the breaker's rest runs on the fake clock: the requests while it is open may take as long
  // as this machine needs
  const clock = fakeClock()
  const up = await fakeUpstream()
    .route('/svc', (req, res) => (failing ? res.writeHead(500).end('down') : echo(req, res)))
    .listen()
  const proxy = await startProxy(up.url, { retry: { attempts: 1 }, circuitBreaker: { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeoutMs: 500 } }, { clock })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  for (let i = 0; i < 5; i++) t.equal((await request(`${proxy.url}/svc`)).status, 500)
  const seenWhenOpened = up.seen.length
  for (let i = 0; i < 10; i++) {
    const reply = await request(`${proxy.url}/svc`)
    t.equal(reply.status, 503)
    t.equal(reply.headers['x-sidecar-error'], 'circuit_open')
    t.ok(Number(reply.headers['retry-after']) >= 1)
  }
  t.equal(up.seen.length, seenWhenOpened, 'zero requests reached the app while open')
  t.equal(await metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}'), 2)
  failing = false
  clock.advance(499)
  t.equal(await metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}'), 2, 'still open 1 ms before resetTimeoutMs')
  clock.advance(1)
  t.equal(await metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}'), 1, 'half-open after resetTimeoutMs')
  t.equal((await request(`${proxy.url}/svc`)).status, 200, 'the probe passes')
  t.equal(up.seen.length, seenWhenOpened + 1, 'exactly one probe')
  t.equal(await metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}'), 0, 'closed again')
  t.equal((await request(`${proxy.url}/svc`)).status, 200)
})

t.test('with an open breaker on one backend, the requests go to the other', async (t) => {
  const good = await fakeUpstream().listen()
  t.teardown(() => good.close())
  const { up, proxy } = await proxied(t, fakeUpstream().seq('/x', 500), {
    backends: [
      { name: 'app', url: 'http://127.0.0.1:1', weight: 50 },
      { name: 'canary', url: good.url, weight: 50 },
    ],
    retry: { attempts: 1 },
    circuitBreaker: { volumeThreshold: 3, resetTimeoutMs: 60_000 },
  })
  // the fixture points backends[0] at the scripted upstream, which always answers 500
  let fromApp = 0
  for (let i = 0; i < 40 && fromApp < 3; i++) if ((await request(`${proxy.url}/x`)).status === 500) fromApp++
  t.equal(await metric(proxy.adminUrl, 'sidecar_circuit_state{backend="app"}'), 2, "app's breaker is open")
  const before = up.seen.length
  for (let i = 0; i < 20; i++) t.equal((await request(`${proxy.url}/x`)).status, 200)
  t.equal(up.seen.length, before, 'nothing went to the open backend')
})

t.test('overload: the excess is refused at once, the rest are served', async (t) => {
  const releases: Array<() => void> = []
  const { up, proxy } = await proxied(
    t,
    fakeUpstream().route('/slow', (_req, res) => releases.push(() => res.end('done'))),
    { limits: { maxConcurrentRequests: 2, maxPendingRequests: 1 } },
  )
  // Five at once: which two the proxy refuses depends on the order their connections arrive in,
  // so the test only counts: the first two answers come before anything was released.
  const settled: Array<[number, string | string[] | undefined]> = []
  const replies = Array.from({ length: 5 }, () =>
    request(`${proxy.url}/slow`).then((r) => {
      settled.push([r.status, r.headers['x-sidecar-error']])
      return r
    }),
  )
  await until(() => settled.length >= 2)
  t.same(settled, [[503, 'overloaded'], [503, 'overloaded']], 'two refused at once, before anything was released')
  for (let i = 0; i < 100 && releases.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(up.seen.length, 2, 'two in flight, one waiting')
  releases.shift()!()
  for (let i = 0; i < 100 && releases.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  while (releases.length) releases.shift()!()
  for (let i = 0; i < 100 && up.seen.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  while (releases.length) releases.shift()!()
  const all = await Promise.all(replies)
  t.same(all.map((r) => r.status).sort(), [200, 200, 200, 503, 503], 'the other three served')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="overloaded"}'), 2)
})
