import t from 'tap'
import { Upstreams, upstreamErrorCode } from '../../src/upstream/client.js'
import { SidecarError } from '../../src/errors.js'
import type { Readable } from 'node:stream'
import { context, deps, metricValue, proxyRequest } from '../fixtures/pipeline.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

const LIMITS = { requestTimeoutMs: 5000, responseIdleTimeoutMs: 5000 }

t.test('undici and socket errors map onto the catalogue', async (t) => {
  const table: Array<[unknown, string]> = [
    [{ code: 'ECONNREFUSED' }, 'upstream_refused'],
    [{ code: 'ENOTFOUND' }, 'upstream_unreachable'],
    [{ code: 'EAI_AGAIN' }, 'upstream_unreachable'],
    [{ code: 'EHOSTUNREACH' }, 'upstream_unreachable'],
    [{ code: 'ENETUNREACH' }, 'upstream_unreachable'],
    [{ code: 'EADDRNOTAVAIL' }, 'upstream_unreachable'],
    [{ code: 'UND_ERR_CONNECT_TIMEOUT' }, 'upstream_connect_timeout'],
    [{ code: 'UND_ERR_HEADERS_TIMEOUT' }, 'upstream_timeout'],
    [{ code: 'UND_ERR_BODY_TIMEOUT' }, 'upstream_timeout'],
    [{ name: 'TimeoutError' }, 'upstream_timeout'],
    [{ code: 'UND_ERR_ABORTED' }, 'client_closed'],
    [{ code: 'UND_ERR_ABORT' }, 'client_closed'],
    [{ code: 'ABORT_ERR' }, 'client_closed'],
    [{ code: 'UND_ERR_HEADERS_OVERFLOW' }, 'upstream_bad_response'],
    [{ code: 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' }, 'upstream_bad_response'],
    [{ code: 'UND_ERR_INFO' }, 'upstream_bad_response'],
    [{ name: 'HTTPParserError' }, 'upstream_bad_response'],
    [{ code: 'UND_ERR_SOCKET' }, 'upstream_reset'],
    [{ code: 'ECONNRESET' }, 'upstream_reset'],
    [{ code: 'EPIPE' }, 'upstream_reset'],
    [{ code: 'EMFILE' }, 'local_resources_exhausted'],
    [{ code: 'ENFILE' }, 'local_resources_exhausted'],
    [{ code: 'ENOBUFS' }, 'local_resources_exhausted'],
    [{ code: 'ENOMEM' }, 'local_resources_exhausted'],
    [new SidecarError('body_too_large'), 'body_too_large'],
    [{ code: 'SOMETHING_NEW' }, 'internal'],
    [null, 'internal'],
  ]
  for (const [err, code] of table) t.equal(upstreamErrorCode(err), code, JSON.stringify(err))
})

t.test('probe: answers from a live app, catalogue codes from a dead or slow one', async (t) => {
  const up = await fakeUpstream()
    .seq('/health', 503)
    .route('/slow', () => {})
    .listen()
  const upstreams = new Upstreams([{ name: 'app', url: up.url, maxConnections: 2, connectTimeoutMs: 500, idleTimeoutMs: 1000 }], LIMITS)
  t.teardown(async () => {
    await upstreams.close()
    await up.close()
  })
  t.same(await upstreams.probe('app', '/', 1000), { ok: true, status: 200 })
  t.same(await upstreams.probe('app', '/health', 1000), { ok: true, status: 503 }, 'any HTTP answer means reachable')
  t.match(await upstreams.probe('app', '/slow', 100), { ok: false, error: 'upstream_timeout' })
  t.match(await upstreams.probe('nope', '/', 100), { ok: false, error: 'internal' })
  t.equal(up.healthChecks(), 3, 'probes identify themselves (user-agent sidecar-proxy-probe)')
})

t.test('keep-alive within the connection bound: forwarded requests share the pooled connection', async (t) => {
  const up = await fakeUpstream().listen()
  const upstreams = new Upstreams([{ name: 'app', url: up.url, maxConnections: 1, connectTimeoutMs: 500, idleTimeoutMs: 1000 }], LIMITS)
  t.teardown(async () => {
    await upstreams.close()
    await up.close()
  })
  const d = deps()
  const handler = upstreams.handler({ metrics: d.metrics, isHealthy: () => true })
  const responses = await Promise.all(Array.from({ length: 5 }, () => handler(proxyRequest({ path: '/k' }), context({ backend: 'app' }))))
  for (const r of responses) await (r.body as Readable & { text(): Promise<string> }).text()
  t.same(responses.map((r) => r.status), [200, 200, 200, 200, 200], 'five concurrent requests queue on the one connection')
  t.equal(up.seen.length, 5)
  t.equal(new Set(up.seen.map((s) => s.remotePort)).size, 1, 'all five came over one connection')
  t.equal(await metricValue(d, 'sidecar_upstream_attempts_total', { backend: 'app', result: '2xx' }), 5)
})

t.test('an unhealthy backend that fails a request answers upstream_unhealthy (503)', async (t) => {
  const port = await freePort()
  const upstreams = new Upstreams([{ name: 'app', url: `http://127.0.0.1:${port}`, maxConnections: 1, connectTimeoutMs: 500, idleTimeoutMs: 1000 }], LIMITS)
  t.teardown(() => upstreams.close())
  const d = deps()
  let healthy = true
  const handler = upstreams.handler({ metrics: d.metrics, isHealthy: () => healthy })
  await t.rejects(handler(proxyRequest(), context({ backend: 'app' })), { code: 'upstream_refused', status: 502 })
  healthy = false
  await t.rejects(handler(proxyRequest(), context({ backend: 'app' })), { code: 'upstream_unhealthy', status: 503, message: /upstream_refused/ })
  await t.rejects(handler(proxyRequest(), context({ backend: 'nope' })), { code: 'no_backend', status: 503 })
})

t.test('sync: an unchanged backend keeps its pool, a changed url gets a new one, a removed one is closed', async (t) => {
  const a = await fakeUpstream().listen()
  const b = await fakeUpstream().listen()
  const opts = { maxConnections: 2, connectTimeoutMs: 500, idleTimeoutMs: 10_000 }
  const upstreams = new Upstreams([{ name: 'app', url: a.url, ...opts }, { name: 'canary', url: b.url, ...opts }], LIMITS)
  t.teardown(async () => {
    await upstreams.close()
    await Promise.all([a.close(), b.close()])
  })
  const handler = upstreams.handler({ metrics: deps().metrics, isHealthy: () => true })
  const get = async (backend: string) => {
    const r = await handler(proxyRequest(), context({ backend }))
    await (r.body as Readable & { text(): Promise<string> }).text()
  }
  await get('app')
  await get('canary')
  upstreams.sync([{ name: 'app', url: a.url, ...opts }], LIMITS)
  t.equal(upstreams.has('canary'), false)
  await Promise.race([b.seen[0]!.closed, new Promise((_, reject) => setTimeout(() => reject(new Error('still open')), 2000))])
  t.pass("the removed backend's idle connection was closed")
  await get('app')
  t.equal(a.seen[1]!.remotePort, a.seen[0]!.remotePort, 'the unchanged pool kept its connection')
  upstreams.sync([{ name: 'app', url: b.url, ...opts }], LIMITS)
  await get('app')
  t.equal(b.seen.length, 2, 'a new url: the new pool goes there')
  await a.seen[0]!.closed
  t.pass("the old pool's connection was closed")
})
