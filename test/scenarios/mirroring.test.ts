// Mirroring through the real proxy on loopback: the shadow gets the same method, path, headers
// and body (SHA-256) with a -shadow Host; a shadow that is slow, down or refusing changes
// nothing of the real answers, nor holds them back; the share holds within 4 standard
// deviations; copies past maxInFlight are dropped and counted; a body over maxReplayBytes is
// not mirrored; copies are never retried nor counted against the real backend; routes override.
import { createHash } from 'node:crypto'
import http from 'node:http'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import t from 'tap'
import type { Test } from 'tap'
import { metric, request, until } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream, freePort, pseudoRandomChunks, sha256Of, type Echo, type RunningUpstream } from '../fixtures/upstream.js'

interface Copy {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  bodyBytes: number
  sha256: string
}

/** A shadow backend that records each copy whole (its body hashed) and answers as `answer`
 *  says: at once, after `delayMs`, never (until closed), or 503. Health checks pass. */
async function shadowBackend(t: Test, answer: { delayMs?: number; never?: boolean; status?: number; readBody?: boolean } = {}) {
  const copies: Copy[] = []
  let arrived = 0
  let answered = 0
  const server = http.createServer((req, res) => {
    if (req.headers['user-agent'] === 'sidecar-proxy-probe') return void res.end('ok')
    arrived++
    const reply = () => {
      if (answer.never) return
      const send = () => {
        answered++
        res.writeHead(answer.status ?? 200, { 'content-type': 'text/plain' }).end('shadow says hi')
      }
      if (answer.delayMs) setTimeout(send, answer.delayMs)
      else send()
    }
    if (answer.readBody === false) return reply()
    const hash = createHash('sha256')
    let bodyBytes = 0
    req.on('data', (c: Buffer) => ((bodyBytes += c.length), hash.update(c)))
    req.on('end', () => {
      copies.push({ method: req.method!, url: req.url!, headers: req.headers, bodyBytes, sha256: hash.digest('hex') })
      reply()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
  t.teardown(close)
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, copies, arrived: () => arrived, answered: () => answered, close }
}

async function upstream(t: Test, builder = fakeUpstream()): Promise<RunningUpstream> {
  const up = await builder.listen()
  t.teardown(() => up.close())
  return up
}

const check = { intervalMs: 60_000, timeoutMs: 1000 }

/** The proxy in front of `app`, mirroring to `shadowUrl` (weight 0: copies only); `shadow`: more
 *  of the shadow backend's settings. */
async function mirrored(t: Test, app: RunningUpstream, shadowUrl: string, extra: Record<string, unknown> = {}, shadow: Record<string, unknown> = {}) {
  const proxy = await startProxy(app.url, {
    backends: [
      { name: 'app', url: app.url, healthCheck: check },
      { name: 'shadow', url: shadowUrl, weight: 0, healthCheck: check, ...shadow },
    ],
    routing: { header: false },
    ...extra,
    mirror: { backend: 'shadow', ...(extra.mirror as object) },
  })
  t.teardown(() => proxy.close())
  return proxy
}

/** The shadow's pool as one connection: copies reach the shadow one at a time, in the order they
 *  were made, so a copy arriving means every copy made before it has arrived. */
const inOrder = { maxConnections: 1 }

const mirrorCount = (proxy: { adminUrl: string }, result: string) => metric(proxy.adminUrl, `sidecar_mirror_requests_total{backend="shadow",result="${result}"}`)

t.test('the shadow gets the same method, path, headers and body, with a -shadow Host', async (t) => {
  for (const [what, limits, bodyBytes] of [
    ['a body received whole (a Buffer)', {}, 20_000],
    ['a streamed body (teed)', { requestBufferBytes: 0 }, 300_000],
  ] as const) {
    await t.test(what, async (t) => {
      const app = await upstream(t)
      const shadow = await shadowBackend(t)
      const proxy = await mirrored(t, app, shadow.url, { limits, retry: { maxReplayBytes: 1024 * 1024 } })
      const chunks = [...pseudoRandomChunks(bodyBytes, 16 * 1024)]
      const headers = { 'content-type': 'application/octet-stream', 'x-custom': 'kept', 'x-request-id': 'mirror-1' }
      const reply = await request(`${proxy.url}/orders/7?expand=items`, { method: 'PUT', headers, body: Readable.from(chunks) })
      t.equal(reply.status, 200)
      const real = JSON.parse(reply.body.toString()) as Echo
      t.equal(real.sha256, sha256Of(chunks), 'the real request got its body whole')
      await until(() => shadow.copies.length === 1)
      const copy = shadow.copies[0]!
      t.equal(copy.method, 'PUT')
      t.equal(copy.url, '/orders/7?expand=items')
      t.equal(copy.sha256, sha256Of(chunks), 'the same body')
      t.equal(copy.bodyBytes, bodyBytes)
      t.equal(copy.headers.host, `127.0.0.1-shadow:${proxy.port}`, '-shadow after the host name, before the port')
      t.equal(real.headers.host, `127.0.0.1:${proxy.port}`, 'the real request keeps its Host')
      for (const name of ['content-type', 'x-custom', 'x-request-id', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']) {
        t.equal(copy.headers[name], real.headers[name], `${name} as the app got it`)
      }
      t.notOk('x-sidecar-attempt' in copy.headers, 'no attempt number: a copy is no attempt')
      await until(() => shadow.answered() === 1)
      t.equal(await mirrorCount(proxy, 'sent'), 1)
    })
  }
})

t.test('a shadow that answers 3 s late: the real answers come first, unchanged', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t, { delayMs: 3000, readBody: false })
  const proxy = await mirrored(t, app, shadow.url, { limits: { requestBufferBytes: 0 }, retry: { maxReplayBytes: 1024 * 1024 } })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 10 })
  t.teardown(() => agent.destroy())
  const bodies = Array.from({ length: 10 }, (_, i) => [...pseudoRandomChunks(200_000 + i, 32 * 1024)])
  const replies = await Promise.all(
    bodies.map((chunks, i) => request(`${proxy.url}/slow-shadow/${i}`, { method: 'POST', agent, body: Readable.from(chunks) })),
  )
  // every real answer is in while the shadow has answered none of its copies (and read none of
  // their bodies): the copies held nothing back
  t.equal(shadow.answered(), 0, 'the shadow still holds every copy')
  replies.forEach((r, i) => {
    t.equal(r.status, 200)
    t.equal((JSON.parse(r.body.toString()) as Echo).sha256, sha256Of(bodies[i]!))
  })
  t.equal(app.seen.length, 10)
  await shadow.close() // the held copies end as failures, after the real answers
})

t.test('a shadow that is down (refusing): every real answer is the same', async (t) => {
  const app = await upstream(t)
  const proxy = await mirrored(t, app, `http://127.0.0.1:${await freePort()}`)
  const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => request(`${proxy.url}/p${i}`, { method: 'POST', body: 'x'.repeat(100) })))
  t.ok(replies.every((r) => r.status === 200 && (JSON.parse(r.body.toString()) as Echo).bodyBytes === 100))
  for (let i = 0; i < 100 && (await mirrorCount(proxy, 'failed')) < 20; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await mirrorCount(proxy, 'failed'), 20)
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_attempts_total{backend="shadow",result="upstream_refused"}'), 0, 'copies are no attempts')
  const ready = await request(`${proxy.adminUrl}/ready`)
  t.equal(ready.status, 200, 'a shadow with weight 0 does not gate readiness')
})

t.test('copies answered 503 are not retried and count against no real backend', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t, { status: 503 })
  const proxy = await mirrored(t, app, shadow.url, { retry: { attempts: 3, retryOn: ['gateway-error'], backoff: { baseMs: 1, maxMs: 2 } } })
  for (let i = 0; i < 20; i++) t.equal((await request(`${proxy.url}/r${i}`)).status, 200)
  await until(() => shadow.answered() === 20)
  t.equal(shadow.arrived(), 20, 'one copy per request: none retried')
  t.equal(await metric(proxy.adminUrl, 'sidecar_retries_total{backend="shadow",reason="gateway-error"}'), 0)
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { backends: Array<{ name: string; breaker: string }>; mirror: Record<string, Record<string, number>> }
  t.ok(status.backends.every((b) => b.breaker === 'closed'))
  for (let i = 0; i < 100 && (await mirrorCount(proxy, 'sent')) < 20; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await mirrorCount(proxy, 'sent'), 20)
  const again = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as typeof status
  t.same(again.mirror, { shadow: { sent: 20 } })
})

t.test('percent: the share of requests copied holds within 4 standard deviations', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t)
  // /fence: copied always, after the rest; maxInFlight: no copy dropped while they queue for the one connection
  const fence = { name: 'fence', match: { pathPrefix: '/fence' }, mirror: { backend: 'shadow', percent: 100 } }
  const proxy = await mirrored(t, app, shadow.url, { mirror: { percent: 25, maxInFlight: 1000 }, routes: [fence] }, inOrder)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  const n = 600
  await Promise.all(Array.from({ length: n }, (_, i) => request(`${proxy.url}/s${i}`, { agent })))
  const sd = Math.sqrt(n * 0.25 * 0.75)
  // every copy of the n is made before its request goes on: once the fence's copy is in, so are they
  t.equal((await request(`${proxy.url}/fence`)).status, 200)
  await until(() => shadow.copies.some((c) => c.url === '/fence'))
  t.equal(await mirrorCount(proxy, 'dropped'), 0, 'no copy dropped')
  const copied = shadow.arrived() - 1
  t.ok(Math.abs(copied - n * 0.25) <= 4 * sd, `${copied} of ${n} copied, expected ${n * 0.25} +- ${Math.ceil(4 * sd)}`)
  t.equal(app.seen.length, n + 1)
})

t.test('maxInFlight: a shadow that never answers, 2 at once, 10 requests: 8 dropped', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t, { never: true })
  const proxy = await mirrored(t, app, shadow.url, { mirror: { maxInFlight: 2 } })
  for (let i = 0; i < 10; i++) t.equal((await request(`${proxy.url}/n${i}`)).status, 200)
  t.equal(await mirrorCount(proxy, 'dropped'), 8)
  await until(() => shadow.arrived() === 2)
  t.equal(shadow.answered(), 0)
  await shadow.close()
  for (let i = 0; i < 100 && (await mirrorCount(proxy, 'failed')) < 2; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await mirrorCount(proxy, 'failed'), 2, 'the two held copies fail when the shadow goes')
})

t.test('a hung shadow is cut at the deadline, freeing its slot', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t, { never: true })
  const proxy = await mirrored(t, app, shadow.url, { mirror: { maxInFlight: 1 }, limits: { requestTimeoutMs: 300 } })
  t.equal((await request(`${proxy.url}/a`)).status, 200)
  for (let i = 0; i < 100 && (await mirrorCount(proxy, 'failed')) < 1; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await mirrorCount(proxy, 'failed'), 1, 'the copy timed out')
  t.equal((await request(`${proxy.url}/b`)).status, 200)
  await until(() => shadow.arrived() === 2)
  t.equal(await mirrorCount(proxy, 'dropped'), 0, 'the slot was free again')
})

t.test('a body over retry.maxReplayBytes is not mirrored; the real request succeeds', async (t) => {
  for (const [what, limits, send] of [
    ['declared (Content-Length)', {}, (b: Buffer[]) => Buffer.concat(b)],
    ['found so while streaming (chunked)', { requestBufferBytes: 0 }, (b: Buffer[]) => Readable.from(b)],
  ] as const) {
    await t.test(what, async (t) => {
      const app = await upstream(t)
      const shadow = await shadowBackend(t)
      const proxy = await mirrored(t, app, shadow.url, { limits, retry: { maxReplayBytes: 4096 } })
      const chunks = [...pseudoRandomChunks(100_000, 1024)]
      const reply = await request(`${proxy.url}/big`, { method: 'POST', body: send(chunks) })
      t.equal(reply.status, 200)
      t.equal((JSON.parse(reply.body.toString()) as Echo).sha256, sha256Of(chunks))
      for (let i = 0; i < 100 && (await mirrorCount(proxy, 'skipped_body')) < 1; i++) await new Promise((r) => setTimeout(r, 20))
      t.equal(await mirrorCount(proxy, 'skipped_body'), 1)
      t.equal(shadow.copies.length, 0, 'no whole copy reached the shadow')
      const small = await request(`${proxy.url}/small`, { method: 'POST', body: 'tiny' })
      t.equal(small.status, 200)
      await until(() => shadow.copies.length === 1)
    })
  }
})

t.test("a route's mirror replaces the top level's; false turns it off", async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t)
  const proxy = await mirrored(
    t,
    app,
    shadow.url,
    {
      routes: [
        { name: 'private', match: { pathPrefix: '/private/' }, mirror: false },
        { name: 'sampled', match: { pathPrefix: '/sampled/' }, mirror: { backend: 'shadow', percent: 0 } },
      ],
    },
    inOrder,
  )
  await request(`${proxy.url}/private/a`)
  await request(`${proxy.url}/sampled/a`)
  await request(`${proxy.url}/public`)
  // a copy of either earlier request would have come before this one
  await until(() => shadow.copies.some((c) => c.url === '/public'))
  t.same(shadow.copies.map((c) => c.url), ['/public'])
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { routes: Array<{ name: string; mirror: unknown }> }
  t.same(Object.fromEntries(status.routes.map((r) => [r.name, r.mirror])), {
    private: null,
    sampled: { backend: 'shadow', percent: 0, maxInFlight: 64 },
    default: { backend: 'shadow', percent: 100, maxInFlight: 64 },
  })
})

t.test('x-canary: always never sends real traffic to a shadow-only backend', async (t) => {
  const app = await upstream(t)
  const shadow = await shadowBackend(t)
  const proxy = await startProxy(app.url, {
    backends: [
      { name: 'app', url: app.url, healthCheck: check },
      { name: 'shadow', url: shadow.url, weight: 0, healthCheck: check },
    ],
    mirror: { backend: 'shadow' },
  })
  t.teardown(() => proxy.close())
  for (const value of ['always', 'never']) {
    const reply = await request(`${proxy.url}/forced`, { headers: { 'x-canary': value } })
    t.equal(reply.status, 200)
    t.ok((JSON.parse(reply.body.toString()) as Echo).url, 'the app answered')
  }
  await until(() => shadow.copies.length === 2)
  t.ok(shadow.copies.every((c) => c.headers.host!.includes('-shadow')), 'the shadow got copies only')
  t.equal(app.seen.length, 2)
})

t.test('an h2c shadow gets the copy with :authority = the -shadow Host', async (t) => {
  const app = await upstream(t)
  const seen: Array<{ authority: string | undefined; path: string | undefined; sha256: string }> = []
  const server = http2.createServer((req, res) => {
    if (req.headers['user-agent'] === 'sidecar-proxy-probe') return void res.end('ok')
    const hash = createHash('sha256')
    req.on('data', (c: Buffer) => hash.update(c))
    req.on('end', () => {
      seen.push({ authority: req.headers[':authority'], path: req.headers[':path'], sha256: hash.digest('hex') })
      res.end('ok')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const proxy = await startProxy(app.url, {
    backends: [
      { name: 'app', url: app.url, healthCheck: check },
      { name: 'shadow', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, protocol: 'h2c', weight: 0, healthCheck: check },
    ],
    mirror: { backend: 'shadow' },
  })
  t.teardown(() => proxy.close())
  const body = Buffer.from('{"order":1}')
  t.equal((await request(`${proxy.url}/h2c/copy`, { method: 'POST', body, headers: { host: 'shop.default.svc:8443' } })).status, 200)
  await until(() => seen.length === 1)
  t.same(seen[0], { authority: 'shop.default.svc-shadow:8443', path: '/h2c/copy', sha256: sha256Of([body]) })
})
