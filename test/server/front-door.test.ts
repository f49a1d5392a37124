// The front door's bookkeeping on its own (admission, load shedding, the abuse report), then
// the listener shedding load with an event-loop delay the test chooses and a fake clock.
import http from 'node:http'
import http2 from 'node:http2'
import t from 'tap'
import { AbuseReport } from '../../src/server/abuse.js'
import { Admission } from '../../src/server/admission.js'
import { Listener } from '../../src/server/listener.js'
import { LoadShedder } from '../../src/server/shedding.js'
import { fakeClock } from '../fixtures/clock.js'
import { request, within } from '../fixtures/client.js'
import { LISTENER_OPTIONS, deps, fromAsync, metricValue } from '../fixtures/pipeline.js'

const LIMITS = { maxConnections: 3, maxConnectionsPerClient: 2, maxRequestsPerClient: 2 }

t.test('admission: connections within the total and per client; a closed one frees its slot', async (t) => {
  const admission = new Admission(LIMITS, new LoadShedder(0, fakeClock()))
  t.equal(admission.connection('10.0.0.1', true), null)
  t.equal(admission.connection('10.0.0.1', true), null)
  t.equal(admission.connection('10.0.0.1', true), 'too_many_connections', 'a third from one client')
  t.equal(admission.connection('10.0.0.2', true), null, 'another client is admitted')
  t.equal(admission.connection('10.0.0.3', true), 'too_many_connections', 'past the total')
  admission.connectionClosed('10.0.0.1')
  t.equal(admission.connection('10.0.0.3', true), null, 'a slot freed')
  t.equal(admission.connection('10.0.0.1', true), 'too_many_connections', 'the total holds again')
  t.equal(admission.connection('10.0.0.4', true), 'too_many_connections')
  t.equal(admission.connection('10.0.0.4', true, () => true), null, 'at the total, admitted when another makes room')
  t.equal(admission.connection('10.0.0.4', true, () => true), null)
  t.equal(admission.connection('10.0.0.4', true, () => true), 'too_many_connections', "never past its own client's limit")
  t.equal(admission.connection('10.0.0.4', false, () => true), null, "a trusted proxy's connections are not counted per client")
})

t.test('admission: with no per-client limit (the default), one address may hold every connection and request', async (t) => {
  const admission = new Admission({ maxConnections: 3 }, new LoadShedder(0, fakeClock()))
  t.same([1, 2, 3].map(() => admission.connection('10.0.0.1', true)), [null, null, null])
  t.equal(admission.connection('10.0.0.1', true), 'too_many_connections', 'only the total holds')
  t.notOk(admission.perClientRequests)
  t.same(Array.from({ length: 1000 }, () => admission.request('10.0.0.1', 0)).filter((r) => r !== null), [], '1,000 requests of one client admitted')
  t.same(admission.busiest(10), [], 'and no table of clients is kept')
})

t.test('admission: requests in flight per client; refused ones take no slot', async (t) => {
  const admission = new Admission(LIMITS, new LoadShedder(0, fakeClock()))
  t.equal(admission.request('a', 0), null)
  t.equal(admission.request('a', 0), null)
  t.equal(admission.request('a', 0), 'client_over_limit')
  t.equal(admission.request('b', 0), null, 'per client')
  admission.requestDone('a')
  t.equal(admission.request('a', 0), null)
  t.equal(admission.request('a', 0), 'client_over_limit')
})

t.test('load shedding: judged once a second on the loop\'s delay; off when the limit is 0', async (t) => {
  const clock = fakeClock()
  const delays = [10, 800, 600, 20]
  const shedder = new LoadShedder(500, clock, () => delays.shift() ?? 0)
  shedder.start()
  const seen: boolean[] = []
  for (let i = 0; i < 4; i++) {
    clock.advance(1000)
    seen.push(shedder.shedding)
  }
  t.same(seen, [false, true, true, false])
  shedder.close()
  clock.advance(5000)
  t.same(delays, [], 'no sample after close')

  const off = new LoadShedder(0, clock, () => 10_000)
  off.start()
  clock.advance(2000)
  t.equal(off.shedding, false)
})

t.test('the abuse report counts every occurrence and warns once per 10 s per kind', async (t) => {
  const clock = fakeClock()
  const d = deps()
  const report = new AbuseReport({ ...d, clock })
  for (let i = 0; i < 5; i++) report.note('client_slow', 'clients cut')
  report.note('too_many_connections', 'connections refused')
  clock.advance(10_000)
  report.note('client_slow', 'clients cut')
  const warnings = d.lines.filter((l) => l.level === 'warn')
  t.match(warnings, [{ kind: 'client_slow', msg: 'clients cut' }, { kind: 'too_many_connections' }, { kind: 'client_slow', sinceLastWarning: 4 }])
  t.equal(warnings.length, 3)
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'client_slow' }), 6, 'every one counted')
})

t.test('a listener whose event loop runs late sheds the new requests of connections with others in flight; a client asking one thing at a time is served', async (t) => {
  const clock = fakeClock()
  let delay = 0
  const d = deps()
  let served = 0
  const held: Array<() => void> = []
  const listener = new Listener(
    { ...LISTENER_OPTIONS, maxEventLoopDelayMs: 100 },
    fromAsync(async (req) => {
      served++
      if (req.path === '/hold') await new Promise<void>((resolve) => held.push(resolve))
      return { status: 200, headers: {}, body: Buffer.from('ok') }
    }),
    { ...d, clock, loopDelay: () => delay },
  )
  const { port } = await listener.listen()
  t.teardown(() => listener.close(1000))
  t.teardown(() => held.forEach((release) => release()))
  const url = `http://127.0.0.1:${port}`
  const session = http2.connect(url)
  t.teardown(() => session.destroy())
  const h2 = (on: http2.ClientHttp2Session, path = '/') =>
    within(
      new Promise<number | string>((resolve) => {
        const stream = on.request({ ':path': path })
        stream.on('response', (h) => resolve(h[':status']!))
        stream.on('error', () => {})
        stream.on('close', () => resolve(`reset ${stream.rstCode}`))
        stream.end()
      }),
      2000,
      'an HTTP/2 answer',
    )

  t.equal((await request(url)).status, 200)
  const holding = h2(session, '/hold') // a stream in flight on the session
  for (let i = 0; i < 100 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 10))
  delay = 300
  clock.advance(1000)
  t.equal(await h2(session), `reset ${http2.constants.NGHTTP2_REFUSED_STREAM}`, 'HTTP/2: a second stream on a busy session refused, for the client to retry elsewhere')
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'proxy_overloaded' }), 1)
  t.equal((await request(url)).status, 200, 'HTTP/1.1: one request on its connection is served')
  const other = http2.connect(url)
  t.teardown(() => other.destroy())
  t.equal(await h2(other), 200, 'HTTP/2: the first stream of another session too')
  const upgrade = await new Promise<number>((resolve) => {
    http.get(url, { agent: false, headers: { connection: 'upgrade', upgrade: 'websocket' } }, (res) => resolve(res.statusCode!)).on('error', () => resolve(0))
  })
  t.equal(upgrade, 503, 'new tunnels are refused')

  delay = 5
  clock.advance(1000)
  t.equal(await h2(session), 200, 'the busy session served again once the loop is back on time')
  held.forEach((release) => release())
  t.equal(await holding, 200)
  t.equal(served, 5, 'the shed stream never reached the pipeline')
})
