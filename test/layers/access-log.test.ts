import t from 'tap'
import { createAccessLogLayer } from '../../src/layers/access-log.js'
import { context, deps, end, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('one access line and one count per request, written when the exchange ends', async (t) => {
  const d = deps()
  const ctx = context({ id: 'r1', clientAddress: '10.0.0.9' })
  await createAccessLogLayer({ accessLog: true }, d)(scripted(response(201)))(proxyRequest({ method: 'POST', path: '/x?y=1' }), ctx)
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
  await createAccessLogLayer({ accessLog: true }, d)(scripted(response(200)))(proxyRequest({ method: 'BREW' }), ctx)
  end(ctx, { status: 200, complete: false })
  t.match(d.lines[0], { backend: 'none', error: 'upstream_reset', incomplete: true, method: 'BREW' })
  t.equal(await metricValue(d, 'sidecar_requests_total', { backend: 'none', method: 'OTHER', code: '200' }), 1)
})

t.test('accessLog: false keeps the metrics and drops the line', async (t) => {
  const d = deps()
  const ctx = context({ backend: 'app' })
  await createAccessLogLayer({ accessLog: false }, d)(scripted(response(200)))(proxyRequest(), ctx)
  end(ctx)
  end(ctx)
  t.equal(d.lines.length, 0)
  t.equal(await metricValue(d, 'sidecar_requests_total', { backend: 'app', method: 'GET', code: '200' }), 2)
})
