// Canary routing through the real proxy: the weighted split on long-lived keep-alive
// connections, the override header, the sticky cookie, and live reloads of the config file
// (a ConfigMap-style mount) under load.
import http from 'node:http'
import autocannon from 'autocannon'
import t from 'tap'
import type { Test } from 'tap'
import { json, metric, request, until } from '../fixtures/client.js'
import { MountedDir } from '../fixtures/mount.js'
import { startProxy, startProxyFromFile, type RunningProxy } from '../fixtures/proxy.js'
import { fakeUpstream, type RunningUpstream } from '../fixtures/upstream.js'

/** The app and the canary: two fake upstreams, closed at teardown. */
async function pair(t: Test): Promise<{ app: RunningUpstream; canary: RunningUpstream }> {
  const app = await fakeUpstream().listen()
  const canary = await fakeUpstream().listen()
  t.teardown(() => Promise.all([app.close(), canary.close()]))
  return { app, canary }
}

const backends = (app: RunningUpstream, canary: RunningUpstream, appWeight: number, canaryWeight: number) => [
  { name: 'app', url: app.url, weight: appWeight, healthCheck: { intervalMs: 200, timeoutMs: 100 } },
  { name: 'canary', url: canary.url, weight: canaryWeight, healthCheck: { intervalMs: 200, timeoutMs: 100 } },
]

/** `n` GETs over `connections` keep-alive connections; resolves with the sockets used. */
async function send(url: string, n: number, connections: number, headers: http.OutgoingHttpHeaders = {}): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections })
  const sockets = new Set<unknown>()
  let left = n
  const worker = async () => {
    while (left-- > 0) {
      await new Promise<void>((resolve, reject) => {
        const req = http.get(url, { agent, headers }, (res) => {
          if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`))
          res.resume().on('end', resolve)
        })
        req.on('socket', (s) => sockets.add(s))
        req.on('error', reject)
      })
    }
  }
  await Promise.all(Array.from({ length: connections }, worker))
  agent.destroy()
  return sockets.size
}

/** Pearson's chi-square of two observed counts against the expected share of the first. */
function chiSquare(a: number, b: number, shareA: number): number {
  const n = a + b
  return (a - n * shareA) ** 2 / (n * shareA) + (b - n * (1 - shareA)) ** 2 / (n * (1 - shareA))
}

t.test('the split follows the weights per request on a handful of keep-alive connections', async (t) => {
  for (const [appWeight, canaryWeight, n] of [
    [90, 10, 3000],
    [50, 50, 2000],
    [100, 0, 500],
    [0, 100, 500],
  ] as const) {
    const { app, canary } = await pair(t)
    const proxy = await startProxy(app.url, { backends: backends(app, canary, appWeight, canaryWeight) })
    const sockets = await send(`${proxy.url}/split`, n, 4)
    await proxy.close()
    const a = app.seen.length
    const c = canary.seen.length
    const label = `${appWeight}/${canaryWeight}: app ${a}, canary ${c} over ${sockets} connections`
    t.equal(a + c, n, `${label}: every request answered once`)
    t.ok(sockets <= 4, `${label}: the client kept its connections`)
    if (canaryWeight === 0) t.equal(c, 0, `${label}: weight 0 gets nothing`)
    else if (appWeight === 0) t.equal(a, 0, `${label}: weight 0 gets nothing`)
    else {
      // 1 degree of freedom: a statistic above 10.83 happens by chance once in 1,000 runs
      const chi = chiSquare(a, c, appWeight / (appWeight + canaryWeight))
      t.ok(chi < 10.83, `${label}: chi-square ${chi.toFixed(2)} < 10.83`)
    }
  }
})

t.test('x-canary forces a side both ways; the split shows in the metrics by backend', async (t) => {
  const { app, canary } = await pair(t)
  const proxy = await startProxy(app.url, { backends: backends(app, canary, 50, 50) })
  t.teardown(() => proxy.close())
  await send(`${proxy.url}/forced`, 50, 2, { 'x-canary': 'always' })
  t.equal(canary.seen.length, 50, 'always: all to the canary')
  t.equal(canary.seen[0]!.headers['x-canary'], 'always', 'the header reaches the app')
  await send(`${proxy.url}/forced`, 50, 2, { 'x-canary': 'never' })
  t.equal(app.seen.length, 50, 'never: all to the stable app')
  t.equal(await metric(proxy.adminUrl, 'sidecar_requests_total{backend="canary",method="GET",code="200",route="default"}'), 50)
  t.equal(await metric(proxy.adminUrl, 'sidecar_requests_total{backend="app",method="GET",code="200",route="default"}'), 50)
})

t.test('the sticky cookie keeps a client on the side it was first sent to', async (t) => {
  const { app, canary } = await pair(t)
  const proxy = await startProxy(app.url, { backends: backends(app, canary, 50, 50), routing: { sticky: { cookie: 'side' } } })
  t.teardown(() => proxy.close())
  const first = await request(`${proxy.url}/`)
  const setCookie = first.headers['set-cookie']![0]!
  const side = /^side=(app|canary);/.exec(setCookie)![1]!
  const cookie = setCookie.split(';')[0]!
  for (let i = 0; i < 40; i++) {
    const reply = await request(`${proxy.url}/`, { headers: { cookie } })
    t.equal(reply.headers['set-cookie'], undefined)
  }
  const stuck = side === 'app' ? app : canary
  t.equal(stuck.seen.length, 41, `all 41 requests went to ${side}`)
})

t.test('an unhealthy canary gets no traffic; with gatesReadiness false it leaves the pod ready', async (t) => {
  const app = await fakeUpstream().listen()
  const canary = await fakeUpstream().route('/', (_req, res) => res.writeHead(500).end()).listen()
  t.teardown(() => Promise.all([app.close(), canary.close()]))
  const [stable, sick] = backends(app, canary, 50, 50)
  const proxy = await startProxy(app.url, { backends: [stable, { ...sick, gatesReadiness: false }], retry: { attempts: 1 } })
  t.teardown(() => proxy.close())
  await until(() => proxy.app.backends().app?.healthy === true)
  await send(`${proxy.url}/x`, 100, 2)
  t.equal(canary.seen.length, 0, 'the unhealthy canary got none of 100')
  t.equal(app.seen.length, 100)
  const ready = await json<{ ready: boolean }>(`${proxy.adminUrl}/ready`)
  t.equal(ready.body.ready, true, 'a failing canary that does not gate readiness costs its share, not the pod')
  const status = await json<{ backends: Array<{ name: string; gatesReadiness: boolean; health: { healthy: boolean } }> }>(`${proxy.adminUrl}/status`)
  t.match(status.body.backends, [
    { name: 'app', gatesReadiness: true, health: { healthy: true } },
    { name: 'canary', gatesReadiness: false, health: { healthy: false } },
  ])
})

/** A config file mounted like a ConfigMap, and the proxy running on it. */
async function mounted(t: Test, yaml: string): Promise<{ mount: MountedDir; proxy: RunningProxy; write: (yaml: string) => void }> {
  const mount = new MountedDir(t.testdir(), ['config.yaml'])
  const write = (text: string) => mount.update({ 'config.yaml': text })
  write(yaml)
  const proxy = await startProxyFromFile(mount.path('config.yaml'))
  t.teardown(() => proxy.close())
  return { mount, proxy, write }
}

const yamlFor = (app: RunningUpstream, canary: RunningUpstream, appWeight: number, canaryWeight: number) => `
backends:
  - name: app
    url: ${app.url}
    weight: ${appWeight}
    healthCheck: { intervalMs: 200, timeoutMs: 100 }
  - name: canary
    url: ${canary.url}
    weight: ${canaryWeight}
    healthCheck: { intervalMs: 200, timeoutMs: 100 }
`

t.test('editing the mounted config under load moves the split with no failed request', async (t) => {
  const { app, canary } = await pair(t)
  const { proxy, write } = await mounted(t, yamlFor(app, canary, 100, 0))
  const versionBefore = proxy.app.config().version
  let written = 0
  const load = autocannon({ url: `${proxy.url}/load`, connections: 8, duration: 3 })
  setTimeout(() => {
    written = Date.now()
    write(yamlFor(app, canary, 0, 100))
  }, 1000)
  const result = await load
  t.ok(result.requests.total > 500, `${result.requests.total} requests sent`)
  t.equal(result.errors, 0, 'no connection errors')
  t.equal(result.non2xx, 0, 'no failed responses')
  t.ok(app.seen.length > 0 && canary.seen.length > 0, `app ${app.seen.length}, canary ${canary.seen.length}`)
  const reloaded = proxy.logs.find((l) => l.msg === 'config reloaded')!
  t.match(reloaded, { reason: 'file changed', previous: versionBefore })
  const tookMs = Date.parse(reloaded.time as string) - written
  t.ok(tookMs < 2000, `the reload came ${tookMs} ms after the write`)
  t.not(proxy.app.config().version, versionBefore)
  const before = app.seen.length
  await send(`${proxy.url}/after`, 50, 2)
  t.equal(app.seen.length, before, 'after the reload the app at weight 0 gets nothing')
  t.equal(await metric(proxy.adminUrl, 'sidecar_config_reloads_total{kind="config",result="success"}'), 1)
  t.equal(await metric(proxy.adminUrl, `sidecar_config_info{version="${proxy.app.config().version}"}`), 1, 'the version in force')
  t.equal(await metric(proxy.adminUrl, `sidecar_config_info{version="${versionBefore}"}`), 0, 'the one before it is gone')
  const loadedAt = await metric(proxy.adminUrl, 'sidecar_config_last_reload_success_timestamp_seconds')
  t.ok(Math.abs(loadedAt * 1000 - Date.parse(reloaded.time as string)) < 1000, 'loaded when the reload was logged')
  const status = await json<{ backends: Array<{ name: string; weight: number; lastMinute: { requests: number } }> }>(`${proxy.adminUrl}/status`)
  t.match(status.body.backends, [{ name: 'app', weight: 0 }, { name: 'canary', weight: 100 }])
  t.ok(status.body.backends[1]!.lastMinute.requests > 0, '/status counts what the canary answered')
})

t.test('a broken file keeps the last good config, says what is wrong and counts the failure', async (t) => {
  const { app, canary } = await pair(t)
  const { proxy, write } = await mounted(t, yamlFor(app, canary, 100, 0))
  const version = proxy.app.config().version
  write(yamlFor(app, canary, -5, 0).replace('backends:', 'backendz: []\nbackends:'))
  const result = await proxy.app.reload('test')
  t.match(result, { result: 'failure', version })
  t.same(result.problems, ['backends[0].weight: Too small: expected number to be >=0', 'backendz: unknown key; did you mean "backends"?'])
  await until(() => proxy.logs.some((l) => l.msg === 'config reload failed; the last good config stays in force'))
  t.match(proxy.logs.find((l) => l.msg === 'config reload failed; the last good config stays in force'), { level: 'error', problems: result.problems })
  await send(`${proxy.url}/x`, 30, 2)
  t.equal(app.seen.length, 30, 'the old split still in force')
  t.ok((await metric(proxy.adminUrl, 'sidecar_config_reloads_total{kind="config",result="failure"}')) >= 1)
  t.equal(await metric(proxy.adminUrl, 'sidecar_config_last_reload_successful'), 0, 'the last reload failed')
  t.equal(await metric(proxy.adminUrl, `sidecar_config_info{version="${version}"}`), 1, 'the last good config in force')
  write('backends: [}')
  t.match(await proxy.app.reload('test'), { result: 'failure', problems: [/^not valid YAML or JSON \(line 1, column \d+\): /] })
  t.equal(proxy.app.config().version, version)
  write(yamlFor(app, canary, 100, 0))
  t.match(await proxy.app.reload('file changed'), { result: 'unchanged', version })
  t.match(proxy.logs.at(-1), { level: 'info', msg: 'config file valid again: the config in force is unchanged', version }, 'the fix is confirmed, not silent')
  t.equal(await metric(proxy.adminUrl, 'sidecar_config_last_reload_successful'), 1, 'and the alert on the failure clears')
})

t.test('removing a backend closes its pool and stops its checks; its in-flight response completes', async (t) => {
  const releases: Array<() => void> = []
  const app = await fakeUpstream().listen()
  const canary = await fakeUpstream()
    .route('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('first half, ')
      releases.push(() => res.end('second half'))
    })
    .listen()
  t.teardown(() => Promise.all([app.close(), canary.close()]))
  const { proxy, write } = await mounted(t, yamlFor(app, canary, 0, 100))
  const inFlight = request(`${proxy.url}/stream`)
  await until(() => releases.length === 1)
  await request(`${proxy.url}/idle`) // leaves an idle pooled connection to the canary

  write(yamlFor(app, canary, 100, 0).replace(/ {2}- name: canary[\s\S]*$/, ''))
  t.match(await proxy.app.reload('test'), { result: 'success' })
  const status = await json<{ backends: Array<{ name: string }> }>(`${proxy.adminUrl}/status`)
  t.same(status.body.backends.map((b) => b.name), ['app'])
  t.equal((await request(`${proxy.url}/new`)).status, 200)
  t.equal(app.seen.at(-1)?.url, '/new', 'new requests go to the remaining backend')

  releases[0]!()
  const reply = await inFlight
  t.equal(reply.status, 200)
  t.equal(reply.body.toString(), 'first half, second half', 'the request under way finished on the removed backend')
  await Promise.race([Promise.all(canary.seen.map((s) => s.closed)), new Promise((_, reject) => setTimeout(() => reject(new Error('canary connections still open')), 2000))])
  t.pass("every connection to the removed backend's pool was closed")
  const checks = canary.healthChecks()
  // the remaining backend, checked at the same interval, checked three more times: two whole
  // intervals in which the removed one's checks, were they still running, would have come too
  const appChecks = app.healthChecks()
  await until(() => app.healthChecks() >= appChecks + 3)
  t.equal(canary.healthChecks(), checks, 'no more health checks of the removed backend')
  t.notMatch((await request(`${proxy.adminUrl}/metrics`)).body.toString(), /sidecar_(backend_healthy|circuit_state)\{backend="canary"\}/, 'its health and breaker gauges are gone')
})

t.test('a reload that changes settings bound at start reports them and keeps their running value', async (t) => {
  const { app, canary } = await pair(t)
  const { proxy, write } = await mounted(t, yamlFor(app, canary, 100, 0))
  write(`${yamlFor(app, canary, 50, 50)}limits:\n  maxHeaderBytes: 32768\n  requestTimeoutMs: 5000\n`)
  t.match(await proxy.app.reload('test'), { result: 'success', pendingRestart: ['limits.maxHeaderBytes'] })
  const shown = await json<{ pendingRestart: string[]; config: { limits: { maxHeaderBytes: number; requestTimeoutMs: number } } }>(`${proxy.adminUrl}/config`)
  t.same(shown.body.pendingRestart, ['limits.maxHeaderBytes'])
  t.equal(shown.body.config.limits.maxHeaderBytes, 16384, 'the running value, not the file')
  t.equal(shown.body.config.limits.requestTimeoutMs, 5000, 'what can change live did')
  t.match(proxy.logs.find((l) => l.msg?.toString().startsWith('config changes settings')), { level: 'warn', pendingRestart: ['limits.maxHeaderBytes'] })
  t.match(await proxy.app.reload('test'), { result: 'unchanged' }, 'the same file again changes nothing')
  t.ok(proxy.logs.some((l) => l.msg === 'config read again: nothing changed' && l.reason === 'test'), 'and says so')
})

t.test('a reload that adds a backend on loopback holds readiness until its first check passes', async (t) => {
  const { app, canary } = await pair(t)
  const appOnly = yamlFor(app, canary, 100, 0).replace(/ {2}- name: canary[\s\S]*$/, '')
  const { proxy, write } = await mounted(t, appOnly)
  await until(() => proxy.app.readiness.holding()['backend:app'] === undefined)
  write(yamlFor(app, canary, 90, 10))
  await proxy.app.reload('test')
  const notReady = proxy.logs.filter((l) => l.msg === 'not ready').at(-1)
  t.match(notReady, { holding: { 'backend:canary': 'no health check has passed yet' } }, 'held from the moment the canary gates readiness')
  await until(() => !proxy.app.readiness.isHeld('backend:canary'))
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200, 'ready again once it passed')
  write(yamlFor(app, canary, 100, 0))
  await proxy.app.reload('test')
  t.same(proxy.app.readiness.holding(), {}, 'back at weight 0 it gates nothing')
})

t.test('a reload once the drain has begun changes nothing', async (t) => {
  const { app, canary } = await pair(t)
  const { proxy, write } = await mounted(t, yamlFor(app, canary, 100, 0))
  const version = proxy.app.config().version
  const stopped = proxy.app.close('test', 300)
  write(yamlFor(app, canary, 0, 100))
  t.match(await proxy.app.reload('test'), { result: 'unchanged', version }, 'the pools are closing: nothing new is built')
  t.equal(proxy.app.config().version, version)
  await stopped
})

t.test('GET /config says what waits for a restart even when nothing else changed, and stops saying it once reverted', async (t) => {
  const { app, canary } = await pair(t)
  const base = yamlFor(app, canary, 100, 0)
  const { proxy, write } = await mounted(t, base)
  const pending = async () => (await json<{ pendingRestart: string[] }>(`${proxy.adminUrl}/config`)).body.pendingRestart
  write(`${base}listener:\n  keepAliveTimeoutMs: 30000\n`)
  t.match(await proxy.app.reload('SIGHUP'), { result: 'unchanged', pendingRestart: ['listener'] })
  t.same(await pending(), ['listener'], 'only a restart-only setting changed: /config says so')
  write(base)
  t.match(await proxy.app.reload('SIGHUP'), { result: 'unchanged', pendingRestart: [] })
  t.same(await pending(), [], 'put back: nothing waits any more')
})

t.test('SIDECAR_LOG_LEVEL outlives a reload that sets another level', async (t) => {
  const { app, canary } = await pair(t)
  const previous = process.env.SIDECAR_LOG_LEVEL
  process.env.SIDECAR_LOG_LEVEL = 'debug'
  t.teardown(() => {
    if (previous === undefined) delete process.env.SIDECAR_LOG_LEVEL
    else process.env.SIDECAR_LOG_LEVEL = previous
  })
  const { proxy, write } = await mounted(t, `${yamlFor(app, canary, 100, 0)}log:\n  level: info\n`)
  write(`${yamlFor(app, canary, 90, 10)}log:\n  level: warn\n`)
  t.match(await proxy.app.reload('test'), { result: 'success' })
  t.match(await proxy.app.reload('file changed'), { result: 'unchanged' })
  t.ok(
    proxy.logs.some((l) => l.level === 'debug' && l.msg === 'config read again: nothing changed'),
    'a debug line after the reload to level warn: the environment still rules',
  )
})
