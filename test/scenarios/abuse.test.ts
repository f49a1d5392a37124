// The front door under abuse, on real sockets: slow senders, slow readers, connection and
// request floods, HTTP/2 clients resetting every stream. Each case checks that the abuser is
// stopped, that the app's connections and breaker are spared, and that an honest request is
// still served. (The same attacks by real tools, at scale: `npm run attack`.)
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import t from 'tap'
import { metric, request, until, within } from '../fixtures/client.js'
import { fakeClock } from '../fixtures/clock.js'
import { get, rawSession, rst } from '../fixtures/h2-frames.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

/** A socket that sent `text` and reads nothing back; `closed` when the proxy closes it. */
async function stalled(port: number, text: string) {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  socket.write(text)
  const received: Buffer[] = []
  socket.on('data', (c: Buffer) => received.push(c))
  const closed = new Promise<string>((resolve) => socket.once('close', () => resolve(Buffer.concat(received).toString('latin1'))))
  return { socket, closed }
}

const breakerOf = async (adminUrl: string) => metric(adminUrl, 'sidecar_circuit_state{backend="app"}')
const post = (length: number) => `POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: ${length}\r\n\r\n`

t.test('clients dribbling their bodies hold no connection to the app: 20 of them, the app allows 2, an honest request is served', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream(), { backends: [{ name: 'app', url: 'http://127.0.0.1:1', maxConnections: 2 }] })
  const slow = await Promise.all(Array.from({ length: 20 }, () => stalled(proxy.port, post(1000) + 'x'.repeat(10))))
  const honest = await within(request(`${proxy.url}/honest`), 3000, 'the honest request')
  t.equal(honest.status, 200)
  t.same(
    up.seen.map((s) => s.url),
    ['/honest'],
    'the app heard only of the honest request',
  )
  // the dribblers finish: each is then forwarded whole (a half-close would abort it: Node's rule)
  for (const s of slow) s.socket.write('y'.repeat(990))
  const replies = await within(Promise.all(slow.map((s) => s.closed)), 5000, 'the dribblers answered')
  t.equal(replies.filter((r) => r.startsWith("HTTP/1.1 200")).length, 20, 'and served once complete')
})

t.test('a body that stops coming: 408 request_timeout, the client\'s fault; 25 of them leave the breaker closed', async (t) => {
  // The large bodies are attempts the breaker sees: as many as its volumeThreshold, so that were
  // a stalled body counted against the app, they alone would open it.
  const { up, proxy } = await proxied(t, fakeUpstream(), {
    limits: { bodyIdleTimeoutMs: 100 },
    circuitBreaker: { volumeThreshold: 5, errorThresholdPercentage: 10 },
  })
  // small bodies (received first: no attempt) and 5 past requestBufferBytes (streamed to the app as they come)
  const small = await Promise.all(Array.from({ length: 20 }, () => stalled(proxy.port, post(1000) + 'x')))
  const large = await Promise.all(Array.from({ length: 5 }, () => stalled(proxy.port, post(1 << 20) + 'x'.repeat(100))))
  const replies = await within(Promise.all([...small, ...large].map((s) => s.closed)), 5000, 'every stalled body answered')
  t.equal(replies.filter((r) => /^HTTP\/1\.1 408 [^]*x-sidecar-error: request_timeout/i.test(r)).length, 25, '408 request_timeout, 25 of 25')
  t.equal(up.seen.length, 5, 'only the large bodies reached the app (they stream)')
  await within(Promise.all(up.seen.map((s) => s.closed)), 2000, 'the app\'s requests for the large bodies cut')
  t.equal(await breakerOf(proxy.adminUrl), 0, 'breaker closed: 5 attempts in its window (volumeThreshold 5), none counted as failed')
  t.equal(await metric(proxy.adminUrl, 'sidecar_upstream_attempts_total{backend="app",result="5xx"}'), 0, 'no attempt counted as the app\'s failure')
  t.equal((await request(`${proxy.url}/after`)).status, 200, 'and the app is still served')
})

t.test('every app connection held: a request that waits past its deadline is 503 upstream_busy, not the app\'s fault, and health checks still pass', async (t) => {
  let release!: () => void
  const held = new Promise<void>((resolve) => (release = resolve))
  // the answer has begun (its headers are in: no deadline runs) and holds its connection
  const hold = (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(200).write('begun ')
    void held.then(() => res.end('done'))
  }
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hold', hold), {
    backends: [{ name: 'app', url: 'http://127.0.0.1:1', maxConnections: 1, healthCheck: { intervalMs: 100, timeoutMs: 100 } }],
    limits: { requestTimeoutMs: 300 },
    circuitBreaker: { volumeThreshold: 1, errorThresholdPercentage: 1 },
  })
  t.teardown(() => release())
  const holding = request(`${proxy.url}/hold`)
  await until(() => up.seen.length === 1)
  const checks = up.healthChecks()
  const waited = await within(request(`${proxy.url}/queued`), 3000, 'the queued request answered')
  t.equal(waited.status, 503)
  t.equal(waited.headers['x-sidecar-error'], 'upstream_busy')
  await until(() => up.healthChecks() >= checks + 2)
  t.equal(proxy.app.status().backends[0]!.health?.healthy, true, 'health checks pass on their own connection')
  t.equal(await breakerOf(proxy.adminUrl), 0, 'breaker closed')
  release()
  t.equal((await holding).status, 200)
  // The one connection takes its queue in order: once a request sent after it is answered, the
  // request given up on has had its turn.
  t.equal((await request(`${proxy.url}/next`)).status, 200)
  t.same(
    up.seen.map((s) => s.url),
    ['/hold', '/next'],
    'the request given up on is never sent once a connection frees',
  )
})

t.test('a client that reads nothing of a streamed answer is cut after sendIdleTimeoutMs; the app is not blamed', async (t) => {
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/big', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      const chunk = Buffer.alloc(64 * 1024)
      let sent = 0
      const more = () => {
        while (sent < 64 * 1024 * 1024) {
          sent += chunk.length
          if (!res.write(chunk)) return void res.once('drain', more)
        }
        res.end()
      }
      more()
      res.on('close', () => (sent = Infinity))
    }),
    // one request: at volumeThreshold 1, the cut counted against the app would open the breaker
    { limits: { sendIdleTimeoutMs: 300, responseBufferBytes: 0 }, circuitBreaker: { volumeThreshold: 1, errorThresholdPercentage: 1 } },
  )
  const reader = await stalled(proxy.port, 'GET /big HTTP/1.1\r\nHost: app\r\nx-request-id: slow-reader\r\n\r\n')
  reader.socket.pause()
  const line = await proxy.accessLine('slow-reader')
  t.match(line, { error: 'client_slow', status: 200, incomplete: true })
  // a paused socket hears nothing: reading again, the client finds its connection cut short
  reader.socket.resume()
  const got = await within(reader.closed, 5000, 'the slow reader\'s connection closed')
  t.ok(got.length < 64 * 1024 * 1024, `cut short: ${got.length} bytes of ${64 * 1024 * 1024}`)
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="client_slow"}'), 1)
  t.equal(await breakerOf(proxy.adminUrl), 0, 'breaker closed')
  t.ok(proxy.logs.some((l) => l.level === 'warn' && l.kind === 'client_slow'), 'warned')
})

t.test('a client that goes mid-answer is client_closed, never taken for a slow reader later', async (t) => {
  // the proxy's timers on a clock the test moves: sendIdleTimeoutMs passes when the test says
  const clock = fakeClock()
  // a trickle: the answer flows, never backed up, when the client goes
  const up = await fakeUpstream()
    .route('/trickle', (_req, res) => {
      res.writeHead(200)
      const timer = setInterval(() => res.write('tick\n'), 20)
      res.on('close', () => clearInterval(timer))
    })
    .listen()
  const proxy = await startProxy(up.url, { limits: { sendIdleTimeoutMs: 200 } }, { clock })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  await new Promise<void>((resolve) => {
    const req = http.get(`${proxy.url}/trickle`, { agent: false, headers: { 'x-request-id': 'gone' } }, (res) => {
      res.once('data', () => {
        req.destroy()
        resolve()
      })
    })
    req.on('error', () => {})
  })
  t.match(await proxy.accessLine('gone'), { error: 'client_closed' })
  clock.advance(1000) // well past sendIdleTimeoutMs: a send-idle timer left set by the client's going fires now
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="client_slow"}'), 0, 'no slow reader counted')
  t.notOk(proxy.logs.some((l) => l.kind === 'client_slow'), 'nor warned of')
})

t.test('responses are read ahead of a slow client within responseBufferBytes, under one ceiling for all', async (t) => {
  const SIZE = 16 * 1024 * 1024
  const finished: string[] = []
  /** Per answer: what the app has written, and whether it waits for its connection to take more. */
  const writing = new Map<string, { sent: number; waiting: boolean }>()
  const builder = fakeUpstream().route('/answer', (req, res) => {
    const id = req.headers['x-request-id'] as string
    res.on('finish', () => finished.push(id))
    res.writeHead(200, { 'content-length': SIZE })
    const chunk = Buffer.alloc(64 * 1024, 'a')
    const w = { sent: 0, waiting: false }
    writing.set(id, w)
    const more = () => {
      w.waiting = false
      while (w.sent < SIZE) {
        w.sent += chunk.length
        if (!res.write(chunk)) return void ((w.waiting = true), res.once('drain', more))
      }
      res.end()
    }
    more()
  })
  /** Until the app is done with answer `id`, or has waited on its connection, nothing more taken,
   *  for 200 ms running: the proxy has stopped reading (only a client's read starts it again). */
  const held = async (id: string) => {
    let last = -1
    let since = Date.now()
    while (!finished.includes(id)) {
      const w = writing.get(id)
      if (!w?.waiting || w.sent !== last) [last, since] = [w?.sent ?? -1, Date.now()]
      else if (Date.now() - since >= 200) return
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  const cases: Array<[string, Record<string, number>, boolean, number?]> = [
    ['read ahead whole: the app is done while its client reads nothing', { responseBufferBytes: 32 << 20, bufferMemoryBytes: 64 << 20 }, true],
    ['past the ceiling for all buffers: the app waits for its client', { responseBufferBytes: 32 << 20, bufferMemoryBytes: 1 << 20 }, false],
    ['responseBufferBytes 0: the app waits for its client', { responseBufferBytes: 0 }, false],
    // reading half of it ahead would free nothing: the app's connection is held all the same
    // (what the stalled answer holds on its way, some 100 KiB, is charged to the buffers all the same)
    ['an answer declared larger than responseBufferBytes: not read ahead at all, the app waits', { responseBufferBytes: 8 << 20 }, false, 1 << 20],
  ]
  for (const [what, limits, appDone, heldAtMost] of cases) {
    const { proxy } = await proxied(t, builder, { limits })
    const id = `read-ahead-${limits.bufferMemoryBytes ?? 0}-${limits.responseBufferBytes}`
    const reader = await stalled(proxy.port, `GET /answer HTTP/1.1\r\nHost: app\r\nx-request-id: ${id}\r\n\r\n`)
    reader.socket.pause()
    if (appDone) {
      await within(until(() => finished.includes(id)), 3000, what)
      t.ok(await metric(proxy.adminUrl, 'sidecar_buffered_bytes') > 8 << 20, `${what}: the bytes are held by the proxy`)
    } else {
      await within(held(id), 5000, `${what}: the app held up or done`)
      t.notOk(finished.includes(id), what)
      t.ok(await metric(proxy.adminUrl, 'sidecar_buffered_bytes') <= (heldAtMost ?? limits.bufferMemoryBytes ?? 32 << 20), `${what}: buffers within ${heldAtMost ?? 'the ceiling'}`)
    }
    // the client reads after all: every byte arrives, and the buffers are given back
    let got = 0
    const whole = new Promise<void>((resolve) =>
      reader.socket.on('data', (c: Buffer) => {
        if ((got += c.length) > SIZE) resolve()
      }),
    )
    reader.socket.resume()
    await within(whole, 5000, `${what}: the whole answer read`)
    await within(until(() => finished.includes(id)), 3000, `${what}: the app done`)
    t.equal(await metric(proxy.adminUrl, 'sidecar_buffered_bytes'), 0, `${what}: buffers given back`)
  }
})

t.test('connections per client past maxConnectionsPerClient are closed at once; the others live on', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream(), { limits: { maxConnectionsPerClient: 3 } })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 3 })
  t.teardown(() => agent.destroy())
  // three keep-alive connections, each used once and kept
  await Promise.all([1, 2, 3].map(() => request(`${proxy.url}/`, { agent, headers: { 'x-hold': '1' } })))
  const fourth = await stalled(proxy.port, 'GET / HTTP/1.1\r\nHost: app\r\n\r\n')
  t.equal(await within(fourth.closed, 2000, 'the fourth connection closed'), '', 'closed without a byte')
  t.equal((await request(`${proxy.url}/`, { agent })).status, 200, 'the three admitted still serve')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="too_many_connections"}'), 1)
  agent.destroy()
  await until(() => proxy.app.status().connections.open === 0)
  t.equal((await request(`${proxy.url}/`)).status, 200, 'once they close, the client is admitted again')
})

t.test('requests in flight per client past maxRequestsPerClient: 429 client_over_limit, counted in /status', async (t) => {
  const { up, proxy } = await proxied(
    t,
    fakeUpstream().route('/hang', () => {}),
    { limits: { maxRequestsPerClient: 2 } },
  )
  const hanging = [1, 2].map(() => http.get(`${proxy.url}/hang`, { agent: false }).on('error', () => {}))
  t.teardown(() => hanging.forEach((req) => req.destroy()))
  await until(() => up.seen.length === 2)
  const over = await request(`${proxy.url}/more`)
  t.equal(over.status, 429)
  t.equal(over.headers['x-sidecar-error'], 'client_over_limit')
  t.equal(up.seen.length, 2, 'the app never heard of it')
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString())
  t.equal(status.rejections.byReason.client_over_limit, 1, '/status counts it')
  hanging[0]!.destroy()
  await until(() => proxy.app.status().backends[0]!.inFlight.active === 1)
  t.equal((await request(`${proxy.url}/`)).status, 200, 'a slot freed is a slot for the client again')
})

t.test('HTTP/2 rapid reset past maxStreamResetsPer10s: GOAWAY ENHANCE_YOUR_CALM and the socket closed, whatever the client does', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { limits: { maxStreamResetsPer10s: 50 } })
  const attacker = rawSession(proxy.port)
  const burst: Buffer[] = []
  for (let stream = 1; stream <= 2 * 200 - 1; stream += 2) burst.push(get(stream, '/hang'), rst(stream))
  attacker.socket.write(Buffer.concat(burst))
  // the attacker never closes its end: the proxy must
  await within(attacker.closed, 3000, 'the attacker\'s socket closed by the proxy')
  t.equal(attacker.goawayCode(), http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, 'told why')
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="stream_reset_flood"}'), 1)
  t.ok(proxy.logs.some((l) => l.level === 'warn' && l.kind === 'stream_reset_flood'), 'warned')
  // an honest HTTP/2 client is served
  const session = http2.connect(proxy.url)
  t.teardown(() => session.close())
  const status = await new Promise<number>((resolve, reject) => {
    session.request({ ':path': '/' }).on('response', (h) => resolve(h[':status'] as number)).on('error', reject).end()
  })
  t.equal(status, 200)
})

t.test('an HTTP/2 client opening stream after stream past maxRequestsPerClient: 429 each, then its connection closed', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { limits: { maxRequestsPerClient: 2, maxStreamResetsPer10s: 5 } })
  const session = http2.connect(proxy.url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const goaway = new Promise<number>((resolve) => session.once('goaway', (code) => resolve(code)))
  for (let i = 0; i < 2; i++) session.request({ ':path': '/hang' }).on('error', () => {}).end()
  await until(() => up.seen.length === 2)
  const statuses: Array<number | string> = []
  for (let i = 0; i < 10 && !session.closed && !session.destroyed; i++) {
    statuses.push(
      await new Promise<number | string>((resolve) => {
        const stream = session.request({ ':path': '/more' })
        stream.on('response', (h) => resolve(h[':status']!)).on('error', (err: Error) => resolve(err.message)).end()
        stream.resume()
      }),
    )
  }
  t.same(statuses.slice(0, 5), [429, 429, 429, 429, 429], 'refused with 429 while within the budget (5)')
  t.match(statuses[5], /code 11/, 'the one past it ends the connection')
  t.equal(await within(goaway, 2000, 'the GOAWAY'), http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
  t.equal(up.seen.length, 2, 'the app saw only the two within the limit')
})

t.test('an HTTP/2 client that goes with streams open is no abuser: its cancelled streams spend no budget', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { limits: { maxStreamResetsPer10s: 1 } })
  for (let round = 0; round < 2; round++) {
    const client = rawSession(proxy.port)
    client.socket.write(Buffer.concat([1, 3, 5, 7, 9].map((stream) => get(stream, '/hang'))))
    await until(() => up.seen.length === 5 * (round + 1))
    client.socket.destroy() // the client process dies, its streams open
    await until(() => proxy.app.status().connections.open === 0)
  }
  await until(() => proxy.logs.filter((l) => l.msg === 'request').length === 10)
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="stream_reset_flood"}'), 0, 'not taken for a flood')
  t.equal((await request(`${proxy.url}/`)).status, 200, 'and the proxy lives on')
})

t.test('HTTP/2 streams past the advertised maximum are refused, and the session serves on', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream().route('/hang', () => {}), { limits: { maxConcurrentStreams: 10 } })
  const client = rawSession(proxy.port)
  const burst: Buffer[] = []
  for (let stream = 1; stream <= 2 * 20 - 1; stream += 2) burst.push(get(stream, '/hang'))
  client.socket.write(Buffer.concat(burst))
  await until(() => client.frames.filter((f) => f.type === 3).length >= 10)
  const refused = client.frames.filter((f) => f.type === 3 && f.payload.readUInt32BE(0) === http2.constants.NGHTTP2_REFUSED_STREAM)
  t.equal(refused.length, 10, '10 of 20 refused with REFUSED_STREAM')
  await until(() => up.seen.length === 10)
  t.equal(up.seen.length, 10, 'the app got the 10 admitted')
  t.notOk(client.socket.destroyed, 'the connection lives on')
  client.socket.destroy()
})

t.test('an idle HTTP/2 connection gets GOAWAY, then its socket is closed even if the client never answers', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream(), { listener: { keepAliveTimeoutMs: 200 } })
  const idle = rawSession(proxy.port)
  await within(idle.closed, 3000, 'the idle socket closed')
  t.equal(idle.goawayCode(), http2.constants.NGHTTP2_NO_ERROR)
})
