// Fairness by behaviour, under pressure only (pipeline/pressure.ts): at each ceiling the proxy
// makes room by evicting whoever has held its place longest for the least progress, and refuses
// the newcomer only when nobody may go. The proxy runs on a clock the test moves, so "stalled for
// two seconds" is exactly that; the sockets are real.
import http from 'node:http'
import net from 'node:net'
import t, { type Test } from 'tap'
import { metric, request, within } from '../fixtures/client.js'
import { fakeClock, type FakeClock } from '../fixtures/clock.js'
import { startProxy, type RunningProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

const CHUNK = Buffer.alloc(64 * 1024, 'x')

/** An app: /big streams 64 MiB (more than a socket's buffers hold; chunked, so that it is read
 *  ahead of a slow client: its length unknown, it may end within the read-ahead), /hang never
 *  answers. */
async function app(t: Test) {
  const up = await fakeUpstream()
    .route('/big', (_req, res) => {
      res.writeHead(200)
      let sent = 0
      const more = () => {
        while (sent < 1024) {
          sent++
          if (!res.write(CHUNK)) return void res.once('drain', more)
        }
        res.end()
      }
      more()
    })
    .route('/hang', () => {})
    .listen()
  t.teardown(() => up.close())
  return up
}

async function proxy(t: Test, upUrl: string, config: Record<string, unknown>): Promise<{ proxy: RunningProxy; clock: FakeClock }> {
  const clock = fakeClock()
  const proxy = await startProxy(upUrl, config, { clock })
  t.teardown(async () => {
    // the stop's deadline runs on the test's clock: moved until the stop is done
    let stopped = false
    const stopping = proxy.close().then(() => (stopped = true))
    for (let i = 0; i < 100 && !stopped; i++) {
      clock.advance(1000)
      await new Promise((r) => setTimeout(r, 10))
    }
    await stopping
  })
  return { proxy, clock }
}

/** Waits until the proxy's connections by state (GET /status) include `want`. */
async function states(proxy: RunningProxy, want: Record<string, number>): Promise<void> {
  const now = () => proxy.app.status().connections.byState as Record<string, number>
  const matches = () => Object.entries(want).every(([k, n]) => now()[k] === n)
  for (let i = 0; i < 200 && !matches(); i++) await new Promise((r) => setTimeout(r, 10))
  if (!matches()) throw new Error(`connections ${JSON.stringify(now())}, not ${JSON.stringify(want)}`)
}

/** The access line of the request for `path` (the first such), once written. */
async function lineOf(proxy: RunningProxy, path: string): Promise<Record<string, unknown>> {
  const find = () => proxy.logs.find((l) => l.msg === 'request' && l.path === path)
  for (let i = 0; i < 200 && !find(); i++) await new Promise((r) => setTimeout(r, 10))
  return find() ?? {}
}

/** A raw client that wrote `text` and reads nothing; `closed` when the proxy closes it. */
async function client(port: number, text: string) {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  if (text) socket.write(text)
  socket.pause()
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  return { socket, closed }
}

const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: app\r\n\r\n`

/** Waits until `n` of the proxy's answers are read ahead (about) as far as they may go,
 *  limits.responseBufferBytes each less what a last chunk would overrun: each client reads
 *  nothing, its answer's stream has paused. */
async function readAheadFull(proxy: RunningProxy, n: number): Promise<void> {
  const full = async () => (await metric(proxy.adminUrl, 'sidecar_buffered_bytes')) >= n * 192 * 1024
  for (let i = 0; i < 300 && !(await full()); i++) await new Promise((r) => setTimeout(r, 10))
  if (!(await full())) throw new Error(`the read-ahead never filled: ${await metric(proxy.adminUrl, 'sidecar_buffered_bytes')} bytes`)
}

const evictions = (proxy: RunningProxy, resource: string, reason: string) => metric(proxy.adminUrl, `sidecar_evictions_total{resource="${resource}",reason="${reason}"}`)

async function openConnections(proxy: RunningProxy, n: number): Promise<void> {
  for (let i = 0; i < 200 && proxy.app.status().connections.open !== n; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(proxy.app.status().connections.open, n, `${n} connections open`)
}

t.test('connections: at maxConnections the one silent longest goes for a newcomer; the others stay', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConnections: 3 } })
  const silent = []
  for (const wait of [500, 500, 1500]) {
    silent.push(await client(p.port, 'GET / HT')) // a request line that never ends (slowloris)
    await states(p, { silent: silent.length })
    clock.advance(wait)
  }
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  await within(silent[0]!.closed, 2000, 'the one silent longest closed')
  t.notOk(silent[1]!.socket.destroyed || silent[2]!.socket.destroyed, 'the others stay')
  t.equal(await evictions(p, 'connections', 'silent'), 1)
  for (const s of silent) s.socket.destroy()
})

t.test('connections: a connection that has sent not a byte goes (its handshake pending on its client); one that has, stays', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConnections: 2 } })
  const mute = await client(p.port, '')
  await states(p, { handshake: 1 })
  clock.advance(2000)
  const talking = await client(p.port, 'GET / HT')
  await states(p, { handshake: 1, silent: 1 })
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  t.equal(await evictions(p, 'connections', 'handshake'), 1, 'the mute one closed')
  t.notOk(talking.socket.destroyed, 'the one that spoke stays')
  talking.socket.destroy()
  mute.socket.destroy()
})

t.test('connections: at the ceiling even a young resting connection goes, the oldest first; the newcomer is let in', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConnections: 2 } })
  const older = await client(p.port, 'GET / HT')
  await states(p, { silent: 1 })
  clock.advance(300)
  const younger = await client(p.port, 'GET / HT')
  await states(p, { silent: 2 })
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  await within(older.closed, 2000, 'the older one closed')
  t.notOk(younger.socket.destroyed, 'the younger stays')
  younger.socket.destroy()
})

t.test('connections: an idle keep-alive connection goes before a busy one; every one busy on the app: the newcomer is refused', async (t) => {
  const up = await app(t)
  const { proxy: p } = await proxy(t, up.url, { limits: { maxConnections: 2 } })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  t.equal((await request(`${p.url}/`, { agent })).status, 200) // its connection now idle, kept alive
  const busy = http.get(`${p.url}/hang`, { agent: false }).on('error', () => {})
  t.teardown(() => busy.destroy())
  await openConnections(p, 2)
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'served in place of the idle one')
  t.equal(await evictions(p, 'connections', 'idle'), 1)
  // now: the hanging request (waiting on the app: no stall of its client's) and the newcomer's
  // own connection, closed after its answer; then a second hanging one
  const busy2 = http.get(`${p.url}/hang`, { agent: false }).on('error', () => {})
  t.teardown(() => busy2.destroy())
  await openConnections(p, 2)
  const refused = await client(p.port, get('/'))
  await within(refused.closed, 2000, 'the newcomer closed')
  t.equal(await metric(p.adminUrl, 'sidecar_rejected_requests_total{reason="too_many_connections"}'), 1, 'refused: both busy on the app, neither stalled')
})

t.test('connections: a client reading nothing of its answer goes before clients waiting on the app', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConnections: 3 } })
  const reader = await client(p.port, get('/big'))
  await readAheadFull(p, 1)
  const waiting = [1, 2].map(() => http.get(`${p.url}/hang`, { agent: false }).on('error', () => {}))
  t.teardown(() => waiting.forEach((r) => r.destroy()))
  await openConnections(p, 3)
  clock.advance(2000)
  await states(p, { stalled: 1, busy: 2 })
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  t.match(await lineOf(p, '/big'), { error: 'client_slow', incomplete: true }, 'the slow reader was cut, its access line blaming its client')
  t.equal(await evictions(p, 'connections', 'stalled'), 1)
  t.equal(await evictions(p, 'connections', 'slow_reader'), 1, 'its exchange counted as a slow reader evicted')
  t.notOk(waiting.some((r) => r.destroyed), 'the clients waiting on the app stay')
  reader.socket.destroy()
})

t.test('connections: a body sent slower than the minimum rate goes; one merely begun stays', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConnections: 2 } })
  const post = `POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n${'x'.repeat(10)}`
  const dribbler = await client(p.port, post)
  await states(p, { busy: 1 })
  clock.advance(3000) // 3 s for some 90 bytes: far behind 1 KiB/s
  const begun = await client(p.port, post)
  await states(p, { stalled: 1, busy: 1 })
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  await within(dribbler.closed, 2000, 'the dribbler cut')
  t.notOk(begun.socket.destroyed, 'the body begun just now stays')
  t.equal(await evictions(p, 'connections', 'slow_body'), 1)
  t.match(await lineOf(p, '/upload'), { error: 'client_slow' })
  begun.socket.destroy()
})

t.test('requests: every slot of a backend held by clients reading nothing: the one stalled longest gives its slot to a newcomer', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConcurrentRequests: 2 } })
  const first = await client(p.port, get('/big'))
  await readAheadFull(p, 1)
  clock.advance(500)
  t.teardown(() => first.socket.destroy())
  const second = await client(p.port, get('/big'))
  await readAheadFull(p, 2)
  clock.advance(1500) // the first stalled 2 s, the second 1.5 s
  t.equal((await within(request(`${p.url}/`), 2000, 'the newcomer')).status, 200, 'the newcomer is served')
  const cut = p.logs.filter((l) => l.msg === 'request' && l.path === '/big')
  t.equal(cut.length, 1, 'one slow reader cut, the other still in flight')
  t.match(cut[0], { error: 'client_slow', requestId: up.seen.find((r) => r.url === '/big')!.headers['x-request-id'] }, 'the one stalled longest')
  t.equal(await evictions(p, 'requests', 'slow_reader'), 1)
  t.equal(await metric(p.adminUrl, 'sidecar_rejected_requests_total{reason="overloaded"}'), 0, 'nobody refused')
  t.equal(await metric(p.adminUrl, 'sidecar_circuit_state{backend="app"}'), 0, 'the breaker knows nothing of it')
  second.socket.destroy()
})

t.test('requests: slots held by requests the app works on are not taken: the newcomer waits its turn', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { maxConcurrentRequests: 1, maxPendingRequests: 0 } })
  const hanging = http.get(`${p.url}/hang`, { agent: false }).on('error', () => {})
  t.teardown(() => hanging.destroy())
  for (let i = 0; i < 200 && up.seen.length === 0; i++) await new Promise((r) => setTimeout(r, 10))
  clock.advance(5000)
  const refused = await request(`${p.url}/`)
  t.equal(refused.status, 503, 'no room, nobody stalled: the last resort, refused')
  t.equal(refused.headers['x-sidecar-error'], 'overloaded')
  t.equal(await evictions(p, 'requests', 'slow_reader'), 0)
})

t.test('buffers: an answer its client stops taking is charged what it holds on its way, and given it back when it goes', async (t) => {
  const up = await app(t)
  const { proxy: p } = await proxy(t, up.url, { limits: { responseBufferBytes: 0 } }) // no read-ahead: the charge alone
  const reader = await client(p.port, get('/big'))
  const charged = async () => metric(p.adminUrl, 'sidecar_buffered_bytes')
  for (let i = 0; i < 200 && (await charged()) === 0; i++) await new Promise((r) => setTimeout(r, 10))
  const bytes = await charged()
  t.ok(bytes >= 16 * 1024 && bytes <= 1024 * 1024, `held for the stalled client: ${bytes} bytes (its body's buffer and its connection's)`)
  reader.socket.destroy()
  for (let i = 0; i < 200 && (await charged()) > 0; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(await charged(), 0, 'given back when it goes')
})

t.test('buffers: past bufferMemoryBytes stalled readers holding most are evicted until the bytes held are back under it; the newcomer is kept', async (t) => {
  const up = await app(t)
  const { proxy: p, clock } = await proxy(t, up.url, { limits: { bufferMemoryBytes: 512 * 1024 } })
  const request = (id: string) => `GET /big HTTP/1.1\r\nHost: app\r\nx-request-id: ${id}\r\n\r\n`
  const readers = [await client(p.port, request('old-1')), await client(p.port, request('old-2'))]
  await readAheadFull(p, 2) // the ceiling: 2 x 256 KiB read ahead, and what each holds beside
  clock.advance(2000)
  const newcomer = await client(p.port, request('newcomer')) // wants read-ahead: none left
  const cut = async () => p.logs.filter((l) => l.msg === 'request' && l.error === 'client_slow').map((l) => l.requestId)
  for (let i = 0; i < 300 && (await cut()).length < 1; i++) await new Promise((r) => setTimeout(r, 10))
  const gone = await cut()
  t.ok(gone.length >= 1 && gone.every((id) => id === 'old-1' || id === 'old-2'), `stalled readers evicted, as many as needed: ${gone.join(', ')}`)
  t.equal(await evictions(p, 'buffers', 'slow_reader'), gone.length, 'each counted once')
  t.notOk(newcomer.socket.destroyed, 'the newcomer is kept')
  t.ok((await metric(p.adminUrl, 'sidecar_buffered_bytes')) <= 512 * 1024, 'within the ceiling')
  for (const r of [...readers, newcomer]) r.socket.destroy()
})
