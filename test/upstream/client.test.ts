import t from 'tap'
import { Upstream, upstreamErrorCode } from '../../src/upstream/client.js'
import { SidecarError } from '../../src/errors.js'
import type { Readable } from 'node:stream'
import type { ProxyRequest } from '../../src/pipeline/types.js'
import { context, deps, metricValue, promised, proxyRequest, textOf } from '../fixtures/pipeline.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

const POOL = { protocol: 'http1' as const, maxConnections: 2, connectTimeoutMs: 500, idleTimeoutMs: 1000, responseIdleTimeoutMs: 5000 }

/** One attempt forwarded by `upstream`, its backend healthy or not. */
function forward(upstream: Upstream, req: ProxyRequest, healthy: boolean) {
  return promised((r, ctx, reply) => upstream.request(r, ctx, { health: { healthy } }, reply))(req, context({ backend: 'app' }))
}

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
  const upstream = new Upstream('app', { ...POOL, url: up.url }, { metrics: deps().metrics })
  t.teardown(async () => {
    await upstream.close()
    await up.close()
  })
  t.same(await upstream.probe({ path: '/', timeoutMs: 1000 }), { ok: true, status: 200 })
  t.same(await upstream.probe({ path: '/health', timeoutMs: 1000 }), { ok: true, status: 503 }, 'any HTTP answer means reachable')
  t.match(await upstream.probe({ path: '/slow', timeoutMs: 100 }), { ok: false, error: 'upstream_timeout' })
  t.equal(up.healthChecks(), 3, 'probes identify themselves (user-agent sidecar-proxy-probe)')
  const down = new Upstream('down', { ...POOL, url: `http://127.0.0.1:${await freePort()}` }, { metrics: deps().metrics })
  t.teardown(() => down.close())
  t.match(await down.probe({ path: '/', timeoutMs: 1000 }), { ok: false, error: 'upstream_refused' })
})

t.test('keep-alive within the connection bound: forwarded requests share the pooled connection', async (t) => {
  const up = await fakeUpstream().listen()
  const d = deps()
  const upstream = new Upstream('app', { ...POOL, url: up.url, maxConnections: 1 }, { metrics: d.metrics })
  t.teardown(async () => {
    await upstream.close()
    await up.close()
  })
  const responses = await Promise.all(Array.from({ length: 5 }, () => forward(upstream, proxyRequest({ path: '/k' }), true)))
  for (const r of responses) await textOf(r.body as Readable)
  t.same(responses.map((r) => r.status), [200, 200, 200, 200, 200], 'five concurrent requests queue on the one connection')
  t.equal(up.seen.length, 5)
  t.equal(new Set(up.seen.map((s) => s.remotePort)).size, 1, 'all five came over one connection')
  t.equal(await metricValue(d, 'sidecar_upstream_attempts_total', { backend: 'app', result: '2xx' }), 5)
})

t.test('an unhealthy backend that fails a request answers upstream_unhealthy (503)', async (t) => {
  const port = await freePort()
  const upstream = new Upstream('app', { ...POOL, url: `http://127.0.0.1:${port}`, maxConnections: 1 }, { metrics: deps().metrics })
  t.teardown(() => upstream.close())
  let healthy = true
  const send = () => forward(upstream, proxyRequest(), healthy)
  await t.rejects(send(), { code: 'upstream_refused', status: 502 })
  healthy = false
  await t.rejects(send(), { code: 'upstream_unhealthy', status: 503, message: /upstream_refused/ })
})

t.test('an answer that came whole is handed on as one Buffer; one still coming streams, trailers and all', async (t) => {
  let finish: () => void = () => {}
  const up = await fakeUpstream()
    .route('/small', (_req, res) => res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' }).end('hello'))
    .route('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' })
      res.write('first ')
      finish = () => {
        res.addTrailers({ 'x-checksum': 'abc' })
        res.end('second')
      }
    })
    .listen()
  const upstream = new Upstream('app', { ...POOL, url: up.url }, { metrics: deps().metrics })
  t.teardown(async () => {
    await upstream.close()
    await up.close()
  })
  const send = (path: string) => forward(upstream, proxyRequest({ path, headers: { te: 'trailers' } }), true)

  const small = await send('/small')
  t.ok(Buffer.isBuffer(small.body), 'no stream for an answer that is already in memory')
  t.equal(String(small.body), 'hello')

  const streamed = await send('/stream')
  t.notOk(Buffer.isBuffer(streamed.body), 'the rest has yet to come: a stream')
  const body = streamed.body as Readable
  const chunks: string[] = []
  body.on('data', (c: Buffer) => {
    chunks.push(String(c))
    if (chunks.length === 1) finish()
  })
  await new Promise((resolve) => body.once('end', resolve))
  t.equal(chunks.join(''), 'first second', 'what came before the hand-over and after it, in order')
  t.same(streamed.trailers, { 'x-checksum': 'abc' }, 'trailers filled in by the end')
})
