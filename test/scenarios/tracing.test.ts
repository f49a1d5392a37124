// Tracing through the real proxy, against a fake app and a fake OpenTelemetry Collector on
// loopback (test/fixtures/collector.ts decodes OTLP protobuf with the protocol's own message
// definitions, and OTLP/JSON). Waits are bounded polls; nothing asserts a duration.
import t, { type Test } from 'tap'
import { metric, request, until, within } from '../fixtures/client.js'
import { KIND, fakeCollector, type CollectorOptions, type RunningCollector } from '../fixtures/collector.js'
import { startProxy, type RunningProxy } from '../fixtures/proxy.js'
import { fakeUpstream, type RunningUpstream } from '../fixtures/upstream.js'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const CALLER_SPAN = '00f067aa0ba902b7'
const TP = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/

async function traced(
  t: Test,
  tracing: Record<string, unknown> = {},
  o: { collector?: CollectorOptions; config?: Record<string, unknown>; upstream?: ReturnType<typeof fakeUpstream> } = {},
): Promise<{ up: RunningUpstream; proxy: RunningProxy; collector: RunningCollector }> {
  const collector = await fakeCollector(o.collector)
  const up = await (o.upstream ?? fakeUpstream()).listen()
  const proxy = await startProxy(up.url, {
    ...o.config,
    tracing: { sampleRatio: 1, ...tracing, otlp: { endpoint: collector.url, ...(tracing.otlp as object) }, batch: { scheduledDelayMs: 20, ...(tracing.batch as object) } },
  })
  let closed = false
  t.teardown(async () => {
    if (!closed) await proxy.close()
    await up.close()
    await collector.close()
  })
  return { up, proxy: { ...proxy, close: () => ((closed = true), proxy.close()) }, collector }
}

const parse = (tp: unknown) => {
  const m = TP.exec(String(tp))
  if (!m) throw new Error(`not a traceparent: ${String(tp)}`)
  return { traceId: m[1]!, spanId: m[2]!, flags: m[3]! }
}

for (const protocol of ['http/protobuf', 'http/json'] as const) {
  t.test(`${protocol}: a caller's trace is continued: SERVER span under the caller's, CLIENT span under it, the app's parent is the CLIENT span`, async (t) => {
    const { up, proxy, collector } = await traced(t, { otlp: { protocol } })
    const reply = await request(`${proxy.url}/items/7?secret=1`, {
      headers: { traceparent: `00-${TRACE}-${CALLER_SPAN}-01`, tracestate: 'vendor=abc,other=1' },
    })
    t.equal(reply.status, 200)
    const app = parse(up.seen[0]!.headers.traceparent)
    t.equal(app.traceId, TRACE, 'the app is in the caller\'s trace')
    t.equal(app.flags, '01')
    t.equal(up.seen[0]!.headers.tracestate, 'vendor=abc,other=1', 'tracestate passed on as it came')
    await until(() => collector.spans.length >= 2)
    const server = collector.spans.find((s) => s.kind === KIND.SERVER)!
    const client = collector.spans.find((s) => s.kind === KIND.CLIENT)!
    t.match(server, { traceId: TRACE, parentSpanId: CALLER_SPAN, name: 'HTTP GET', service: 'sidecar-proxy', traceState: 'vendor=abc,other=1' })
    t.match(server.attributes, {
      'http.request.method': 'GET',
      'url.path': '/items/7',
      'http.response.status_code': 200,
      'network.protocol.version': '1.1',
      'server.address': '127.0.0.1',
      'client.address': '127.0.0.1',
      'sidecar.backend': 'app',
      'sidecar.attempts': 1,
    })
    t.notOk('sidecar.error' in server.attributes)
    t.match(client, { traceId: TRACE, parentSpanId: server.spanId, spanId: app.spanId, name: 'HTTP GET' })
    t.match(client.attributes, { 'http.response.status_code': 200, 'sidecar.backend': 'app', 'server.address': '127.0.0.1', 'sidecar.attempt': 1 })
    t.ok(server.startNs <= client.startNs && client.endNs <= server.endNs, 'the CLIENT span lies within the SERVER span')
    t.ok(collector.spans.every((s) => s.contentType.includes(protocol === 'http/json' ? 'json' : 'protobuf')))
    const line = await proxy.accessLine(reply.headers['x-request-id'] as string)
    t.match(line, { trace_id: TRACE, span_id: server.spanId }, 'the access line names the trace and the SERVER span')
  })
}

t.test('an invalid traceparent is treated as absent: a new trace, never passed on verbatim, its tracestate dropped', async (t) => {
  const { up, proxy, collector } = await traced(t)
  const invalid = [
    `01-${TRACE}-${CALLER_SPAN}`, // too short for any version
    `ff-${TRACE}-${CALLER_SPAN}-01`, // version ff
    `00-${'0'.repeat(32)}-${CALLER_SPAN}-01`, // all-zero trace id
    `00-${TRACE}-${'0'.repeat(16)}-01`, // all-zero span id
    `00-${TRACE.toUpperCase()}-${CALLER_SPAN}-01`, // upper-case hex
    `00-${TRACE}-${CALLER_SPAN}-01-extra`, // version 00 with more
    `00-${TRACE}0-${CALLER_SPAN}-01`, // wrong length
  ]
  for (const tp of invalid) {
    const reply = await request(`${proxy.url}/`, { headers: { traceparent: tp, tracestate: 'vendor=abc' } })
    t.equal(reply.status, 200)
  }
  t.equal(up.seen.length, invalid.length)
  for (const [i, seen] of up.seen.entries()) {
    const app = parse(seen.headers.traceparent)
    t.not(seen.headers.traceparent, invalid[i], `${invalid[i]}: not passed on`)
    t.not(app.traceId, TRACE, `${invalid[i]}: a new trace`)
    t.notOk('tracestate' in seen.headers, `${invalid[i]}: its tracestate dropped`)
  }
  await until(() => collector.spans.filter((s) => s.kind === KIND.SERVER).length === invalid.length)
  t.ok(collector.spans.filter((s) => s.kind === KIND.SERVER).every((s) => s.parentSpanId === ''), 'each SERVER span is a root')
})

t.test('a later version is continued (its extra fields ignored)', async (t) => {
  const { up, proxy } = await traced(t)
  await request(`${proxy.url}/`, { headers: { traceparent: `cc-${TRACE}-${CALLER_SPAN}-01-what-comes-next` } })
  t.equal(parse(up.seen[0]!.headers.traceparent).traceId, TRACE)
})

t.test('B3, single and multi header, is continued, and the app gets its B3 headers rewritten', async (t) => {
  const { up, proxy, collector } = await traced(t)
  await request(`${proxy.url}/single`, { headers: { b3: `${TRACE}-${CALLER_SPAN}-1` } })
  await request(`${proxy.url}/multi`, { headers: { 'x-b3-traceid': TRACE.slice(16), 'x-b3-spanid': CALLER_SPAN, 'x-b3-sampled': '1' } })
  const [single, multi] = up.seen
  const a = parse(single!.headers.traceparent)
  t.equal(a.traceId, TRACE)
  t.equal(single!.headers.b3, `${TRACE}-${a.spanId}-1`)
  const b = parse(multi!.headers.traceparent)
  t.equal(b.traceId, '0'.repeat(16) + TRACE.slice(16), 'a 64-bit B3 trace id, widened')
  t.equal(multi!.headers['x-b3-spanid'], b.spanId)
  await until(() => collector.spans.filter((s) => s.kind === KIND.SERVER).length === 2)
  t.same(collector.spans.filter((s) => s.kind === KIND.SERVER).map((s) => s.parentSpanId), [CALLER_SPAN, CALLER_SPAN])
})

t.test('retried: one CLIENT span per attempt under the SERVER span; each attempt\'s traceparent names its own', async (t) => {
  const { up, proxy, collector } = await traced(t, {}, { upstream: fakeUpstream().seq('/flaky', 503, 503, 200), config: { retry: { attempts: 3, backoff: { baseMs: 1, maxMs: 5 } } } })
  const reply = await request(`${proxy.url}/flaky`, { headers: { traceparent: `00-${TRACE}-${CALLER_SPAN}-01` } })
  t.equal(reply.status, 200)
  t.equal(up.seen.length, 3)
  const sent = up.seen.map((s) => parse(s.headers.traceparent))
  t.ok(sent.every((s) => s.traceId === TRACE))
  t.equal(new Set(sent.map((s) => s.spanId)).size, 3, 'three different parents for the app')
  await until(() => collector.spans.length >= 4)
  const server = collector.spans.find((s) => s.kind === KIND.SERVER)!
  const clients = collector.spans.filter((s) => s.kind === KIND.CLIENT).sort((a, b) => Number(a.attributes['sidecar.attempt']) - Number(b.attributes['sidecar.attempt']))
  t.equal(clients.length, 3)
  t.same(clients.map((c) => c.spanId), sent.map((s) => s.spanId), 'each attempt\'s CLIENT span is what the app was told')
  t.ok(clients.every((c) => c.parentSpanId === server.spanId && c.traceId === TRACE))
  t.same(clients.map((c) => c.attributes['http.response.status_code']), [503, 503, 200])
  t.same(clients.map((c) => c.status), [2, 2, 0], 'the failed attempts are errors')
  t.same(clients.map((c) => c.attributes['http.request.resend_count']), [undefined, 1, 2])
  t.match(server.attributes, { 'sidecar.attempts': 3, 'http.response.status_code': 200 })
})

t.test('not sampled: the app still gets a traceparent (flags 00) in the same trace; nothing is exported', async (t) => {
  const { up, proxy, collector } = await traced(t, { sampleRatio: 0 })
  const fresh = await request(`${proxy.url}/`)
  await request(`${proxy.url}/`, { headers: { traceparent: `00-${TRACE}-${CALLER_SPAN}-00` } })
  // a sampled parent is followed, whatever the ratio
  await request(`${proxy.url}/`, { headers: { traceparent: `00-${TRACE}-${CALLER_SPAN}-01` } })
  const [a, b, c] = up.seen.map((s) => parse(s.headers.traceparent))
  t.equal(a!.flags, '00')
  t.equal(b!.flags, '00')
  t.equal(b!.traceId, TRACE, 'an unsampled caller\'s trace is continued')
  t.equal(c!.flags, '01')
  const line = await proxy.accessLine(fresh.headers['x-request-id'] as string)
  t.equal(line.trace_id, a!.traceId, 'the access line names the trace, sampled or not')
  await until(() => collector.spans.length >= 2)
  t.ok(collector.spans.every((s) => s.traceId === TRACE && s.parentSpanId !== ''), 'only the sampled-parent request was exported')
  await proxy.close()
  t.equal(collector.spans.length, 2)
})

t.test('a proxy refusal (no app involved) still has its SERVER span, with the catalogue code', async (t) => {
  const { up, proxy, collector } = await traced(t, {}, { config: { limits: { maxBodyBytes: 4 } } })
  const reply = await request(`${proxy.url}/`, { method: 'POST', body: 'too large a body' })
  t.equal(reply.status, 413)
  t.equal(up.seen.length, 0)
  await until(() => collector.spans.length >= 1)
  t.match(collector.spans[0], { kind: KIND.SERVER, attributes: { 'sidecar.error': 'body_too_large', 'http.response.status_code': 413 } })
})

t.test('a collector that answers 500: requests are answered, the spans are counted as dropped', async (t) => {
  const { proxy, collector } = await traced(t, {}, { collector: { status: 500 } })
  for (let i = 0; i < 5; i++) t.equal((await request(`${proxy.url}/`)).status, 200)
  await until(() => collector.exports >= 1)
  const dropped = () => metric(proxy.adminUrl, 'sidecar_spans_dropped_total{reason="export_failed"}')
  for (let i = 0; i < 250 && (await dropped()) < 10; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await dropped(), 10, 'five SERVER and five CLIENT spans')
  t.ok(proxy.logs.some((l) => l.msg?.toString().startsWith('tracing: spans could not be exported')), 'said once in the log')
})

t.test('a collector that never answers holds no request; a full queue drops and counts', async (t) => {
  const { proxy, collector } = await traced(t, { batch: { maxQueueSize: 4, maxExportBatchSize: 2 }, otlp: { timeoutMs: 60_000 } }, { collector: { hold: true } })
  // every export hangs: requests are answered all the same, within bounded waits
  for (let i = 0; i < 20; i++) t.equal((await within(request(`${proxy.url}/`), 5000, `request ${i}`)).status, 200)
  t.ok(collector.exports >= 1, 'an export is hanging')
  t.ok((await metric(proxy.adminUrl, 'sidecar_spans_dropped_total{reason="queue_full"}')) > 0, 'spans past the queue were dropped and counted')
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { tracing: { queued: number; dropped: number } }
  t.ok(status.tracing.queued <= 4 && status.tracing.dropped > 0, '/status shows the queue and the drops')
  collector.release()
})

t.test('a collector that never answers does not hold the drain past drain.timeoutMs', async (t) => {
  const { proxy, collector } = await traced(t, { otlp: { timeoutMs: 60_000 } }, { collector: { hold: true }, config: { drain: { delayMs: 0, timeoutMs: 300 } } })
  t.equal((await request(`${proxy.url}/`)).status, 200)
  await until(() => collector.exports >= 1)
  await request(`${proxy.url}/`) // its spans wait in the queue behind the hanging export
  await within(proxy.close(), 5000, 'the drain')
  t.pass('the drain ended with an export still hanging')
})

t.test('a collector that is down: requests are answered; spans dropped and counted', async (t) => {
  // the exporter retries a refused connection with backoff until its deadline: a short one here
  const { proxy, collector } = await traced(t, { otlp: { timeoutMs: 200 } })
  await collector.close()
  for (let i = 0; i < 3; i++) t.equal((await within(request(`${proxy.url}/`), 5000, `request ${i}`)).status, 200)
  const dropped = () => metric(proxy.adminUrl, 'sidecar_spans_dropped_total{reason="export_failed"}')
  for (let i = 0; i < 250 && (await dropped()) < 6; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await dropped(), 6, 'three SERVER and three CLIENT spans')
})

t.test('the drain flushes what is queued before the proxy stops', async (t) => {
  const { proxy, collector } = await traced(t, { batch: { scheduledDelayMs: 3_600_000 } })
  for (let i = 0; i < 3; i++) await request(`${proxy.url}/`)
  t.equal(collector.spans.length, 0, 'nothing sent yet: the batch waits for its delay')
  await proxy.close()
  t.equal(collector.spans.length, 6, 'sent on the drain: three SERVER and three CLIENT spans')
})

t.test('/status and GET /config show tracing; the OTLP headers are redacted', async (t) => {
  const { proxy, collector } = await traced(t, { otlp: { headers: { 'api-key': 'secret' } }, serviceName: 'shop' })
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { tracing: Record<string, unknown> }
  t.match(status.tracing, { enabled: true, endpoint: `${collector.url}/v1/traces`, protocol: 'http/protobuf', sampleRatio: 1, serviceName: 'shop' })
  const config = (await request(`${proxy.adminUrl}/config`)).body.toString()
  t.notOk(config.includes('secret'), 'the API key is not shown')
  t.match(JSON.parse(config), { config: { tracing: { otlp: { headers: { 'api-key': '(redacted)' } } } } })
  await request(`${proxy.url}/`)
  await until(() => collector.spans.length >= 2)
  t.equal(collector.spans[0]!.service, 'shop')
})

t.test('tracing off: no traceparent is made up, a caller\'s passes through untouched, no trace in the access line', async (t) => {
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url)
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  const a = await request(`${proxy.url}/`)
  await request(`${proxy.url}/`, { headers: { traceparent: `00-${TRACE}-${CALLER_SPAN}-01` } })
  t.notOk('traceparent' in up.seen[0]!.headers)
  t.equal(up.seen[1]!.headers.traceparent, `00-${TRACE}-${CALLER_SPAN}-01`)
  const line = await proxy.accessLine(a.headers['x-request-id'] as string)
  t.notOk('trace_id' in line)
  const status = JSON.parse((await request(`${proxy.adminUrl}/status`)).body.toString()) as { tracing: unknown }
  t.equal(status.tracing, null)
})

t.test('a request that matched a route: its SERVER span is named after the route and carries http.route; a direct answer is traced too', async (t) => {
  const { up, proxy, collector } = await traced(t, {}, {
    config: {
      routes: [
        { name: 'checkout', match: { pathPrefix: '/checkout/' } },
        { name: 'internal', match: { pathPrefix: '/internal/' }, direct: { status: 404, body: 'no\n' } },
      ],
    },
  })
  t.equal((await request(`${proxy.url}/checkout/1`)).status, 200)
  t.equal((await request(`${proxy.url}/internal/x`)).status, 404)
  t.equal((await request(`${proxy.url}/other`)).status, 200)
  await until(() => collector.spans.filter((s) => s.kind === KIND.SERVER).length >= 3)
  const servers = collector.spans.filter((s) => s.kind === KIND.SERVER)
  const byPath = (path: string) => servers.find((s) => s.attributes['url.path'] === path)!
  t.match(byPath('/checkout/1'), { name: 'checkout', attributes: { 'http.route': 'checkout' } })
  t.match(byPath('/internal/x'), { name: 'internal', attributes: { 'http.route': 'internal', 'http.response.status_code': 404 } })
  t.match(byPath('/other'), { name: 'HTTP GET' })
  t.notOk('http.route' in byPath('/other').attributes, 'no route matched: no http.route')
  t.equal(up.seen.length, 2, 'the direct answer reached no app')
  t.equal(collector.spans.filter((s) => s.kind === KIND.CLIENT).length, 2, 'no CLIENT span for a direct answer: no attempt was made')
})
