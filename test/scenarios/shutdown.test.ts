// Graceful stop: stop accepting, let in-flight requests finish, cut what outlives the deadline.
import http from 'node:http'
import t from 'tap'
import { request, until } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

function slowUpstream() {
  const releases: Array<() => void> = []
  const builder = fakeUpstream().route('/slow', (_req, res) => {
    releases.push(() => res.end('finished'))
  })
  return { builder, releases }
}

t.test('in-flight requests finish during a graceful stop; new connections are refused', async (t) => {
  const { builder, releases } = slowUpstream()
  const up = await builder.listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url, { drain: { delayMs: 0, timeoutMs: 5000 } })
  // keep-alive: the client does not ask for the close itself
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const inFlight = request(`${proxy.url}/slow`, { agent })
  await until(() => releases.length === 1)
  const stopped = proxy.close()
  t.ok(proxy.app.readiness.isHeld('draining'), 'readiness fails as soon as the stop begins')
  t.equal(await proxy.app.metrics.registry.getSingleMetric('sidecar_draining')?.get().then((m) => m.values[0]?.value), 1, 'sidecar_draining says so')
  await t.rejects(request(`${proxy.url}/new`), { code: 'ECONNREFUSED' }, 'no new connections once stopping')
  releases[0]!()
  const reply = await inFlight
  t.equal(reply.status, 200)
  t.equal(reply.body.toString(), 'finished')
  t.equal(reply.headers.connection, 'close', 'the response tells the client the connection ends')
  t.equal(await stopped, 0, 'nothing had to be cut')
})

t.test('idle keep-alive connections are closed at once, not after their idle timeout', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  await new Promise<void>((resolve) => http.get(`${proxy.url}/`, { agent }, (res) => res.resume().on('end', resolve)))
  const started = Date.now()
  await proxy.close()
  t.ok(Date.now() - started < 2000, 'close did not wait for the 65 s keep-alive timeout')
})

t.test('requests outliving drain.timeoutMs are cut and counted', async (t) => {
  const { builder, releases } = slowUpstream()
  const up = await builder.listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url, { drain: { delayMs: 0, timeoutMs: 200 } })
  const inFlight = request(`${proxy.url}/slow`).then(
    () => 'completed',
    (err: NodeJS.ErrnoException) => err.code,
  )
  await until(() => releases.length === 1)
  t.equal(await proxy.close(), 1, 'one request was cut')
  t.equal(await inFlight, 'ECONNRESET', 'the client saw the connection cut, not a made-up response')
})
