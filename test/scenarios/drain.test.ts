// The drain protocol through the real proxy: readiness fails at once, requests are still served
// during drain.delayMs (told to close their connections), then the listener closes, in-flight
// requests finish, and nothing sent before the close is lost.
import { execFile } from 'node:child_process'
import { createRequire } from 'node:module'
import t from 'tap'
import { request, until } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

t.test('drain: not ready at once, served during the delay with Connection: close, then closed', async (t) => {
  const releases: Array<() => void> = []
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/slow', (_req, res) => releases.push(() => res.end('finished'))),
    { drain: { delayMs: 400, timeoutMs: 5000 } },
  )
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200)
  const slow = request(`${proxy.url}/slow`)
  await until(() => releases.length === 1)
  const started = Date.now()
  const stopped = proxy.app.close('test', 400)

  const ready = await request(`${proxy.adminUrl}/ready`)
  t.equal(ready.status, 503, 'readiness fails at once')
  t.match(JSON.parse(ready.body.toString()).holding, { draining: /draining since .* \(test\)/ })
  const during = await request(`${proxy.url}/during-delay`)
  t.equal(during.status, 200, 'a new request during the delay is served')
  t.equal(during.headers.connection, 'close', 'and told to close its connection')

  await until(() => proxy.logs.some((l) => l.msg === 'draining: listener closed, finishing in-flight requests'))
  t.ok(Date.now() - started >= 390, 'the listener stayed open for drain.delayMs')
  await t.rejects(request(`${proxy.url}/after`), { code: 'ECONNREFUSED' }, 'after the delay, no new connections')
  releases[0]!()
  const reply = await slow
  t.equal(reply.status, 200, 'the slow in-flight request completed')
  t.equal(reply.body.toString(), 'finished')
  t.equal(await stopped, 0, 'nothing was cut')
  t.ok(Date.now() - started < 5000, 'done before the deadline')
})

t.test('under autocannon load through the drain delay: every request succeeds', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream(), { drain: { delayMs: 2500, timeoutMs: 10_000 } })
  const bin = createRequire(import.meta.url).resolve('autocannon/autocannon.js')
  // A separate process, 8 keep-alive connections for 2 s; the drain starts 0.5 s in, so 1.5 s of
  // the load meets "Connection: close" answers and reconnects; the listener closes after it.
  const child = execFile(process.execPath, [bin, '-c', '8', '-d', '2', '-j', `${proxy.url}/load`], { encoding: 'utf8' })
  const output = new Promise<string>((resolve, reject) => {
    let stdout = ''
    child.stdout!.on('data', (c: string) => (stdout += c))
    child.once('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`autocannon exited ${code}`))))
  })
  await new Promise((resolve) => setTimeout(resolve, 500))
  const stopped = proxy.app.close('autocannon test', 2500)
  const result = JSON.parse(await output) as { requests: { total: number }; errors: number; timeouts: number; non2xx: number; resets: number }
  t.ok(result.requests.total > 500, `${result.requests.total} requests`)
  t.same({ errors: result.errors, timeouts: result.timeouts, non2xx: result.non2xx }, { errors: 0, timeouts: 0, non2xx: 0 }, `0 failed of ${result.requests.total}`)
  t.equal(await stopped, 0)
})
