import t from 'tap'
import { createAccessLogLayer } from '../../src/layers/access-log.js'
import { context, deps, drive, end, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('one access line and one count per request, written when the exchange ends', async (t) => {
  const d = deps()
  const ctx = context({ id: 'r1', clientAddress: '10.0.0.9' })
  await drive(createAccessLogLayer({ accessLog: true }, d))(scripted(response(201)))(proxyRequest({ method: 'POST', path: '/x?y=1' }), ctx)
  t.equal(d.lines.length, 0, 'nothing is logged before the response is over')
  ctx.backend = 'app'
  end(ctx, { status: 201, bytesIn: 10, bytesOut: 20, durationSeconds: 0.0123456 })
  t.match(d.lines[0], {
    level: 'info',
    msg: 'request',
    requestId: 'r1',
    client: '10.0.0.9',
    method: 'POST',
    path: '/x?y=1',
    status: 201,
    backend: 'app',
    durationMs: 12.346,
    bytesIn: 10,
    bytesOut: 20,
  })
  t.notOk('error' in d.lines[0]! || 'incomplete' in d.lines[0]!)
  t.equal(await metricValue(d, 'sidecar_requests_total', { backend: 'app', method: 'POST', code: '201' }), 1)
  const hist = await d.metrics.registry.getSingleMetric('sidecar_request_duration_seconds')!.get()
  t.equal(hist.values.find((v) => (v as { metricName?: string }).metricName === 'sidecar_request_duration_seconds_count')?.value, 1)
})

t.test('errors and cut-short responses are marked; odd methods do not explode label cardinality', async (t) => {
  const d = deps()
  const ctx = context({ error: 'upstream_reset' })
  await drive(createAccessLogLayer({ accessLog: true }, d))(scripted(response(200)))(proxyRequest({ method: 'BREW' }), ctx)
  end(ctx, { status: 200, complete: false })
  t.match(d.lines[0], { backend: 'none', error: 'upstream_reset', incomplete: true, method: 'BREW' })
  t.equal(await metricValue(d, 'sidecar_requests_total', { backend: 'none', method: 'OTHER', code: '200' }), 1)
})

t.test('accessLog: false keeps the metrics and drops the line', async (t) => {
  const d = deps()
  const ctx = context({ backend: 'app' })
  await drive(createAccessLogLayer({ accessLog: false }, d))(scripted(response(200)))(proxyRequest(), ctx)
  end(ctx)
  end(ctx)
  t.equal(d.lines.length, 0)
  t.equal(await metricValue(d, 'sidecar_requests_total', { backend: 'app', method: 'GET', code: '200' }), 2)
})

t.test('the access line is valid JSON whatever the client put in the path and request id', async (t) => {
  const d = deps()
  const path = '/a"b\\c\n{"status":999}\u2028é?q=<x>'
  const id = 'id"with\\quotes'
  const ctx = context({ id, backend: 'app' })
  await drive(createAccessLogLayer({ accessLog: true }, d))(scripted(response(200)))(proxyRequest({ path }), ctx)
  end(ctx, { status: 502, complete: false })
  t.equal(d.lines.length, 1, 'one line, not split by the newline in the path')
  t.match(d.lines[0], { level: 'info', msg: 'request', path, requestId: id, status: 502, incomplete: true, pid: process.pid })
  t.match(d.lines[0]!.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'an ISO timestamp, like every other line')
})

t.test('request counts are exact across scrapes (they are handed to the registry when it is read)', async (t) => {
  const d = deps()
  const count = () => metricValue(d, 'sidecar_requests_total', { backend: 'app', method: 'GET', code: '200' })
  const layer = drive(createAccessLogLayer({ accessLog: false }, d))(scripted(response(200), response(200), response(200)))
  const once = async () => {
    const ctx = context({ backend: 'app' })
    await layer(proxyRequest(), ctx)
    end(ctx)
  }
  await once()
  t.equal(await count(), 1)
  t.equal(await count(), 1, 'a second scrape counts nothing twice')
  await once()
  await once()
  t.equal(await count(), 3)
})
