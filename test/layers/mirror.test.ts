// The mirror layer alone: the -shadow Host, the draw, the in-flight cap, the body rules, and a
// copy's deadline on the fake clock, with a scripted shadow.
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { createMirrorLayer, shadowHost, type MirrorOptions } from '../../src/layers/mirror.js'
import type { Cancel } from '../../src/pipeline/cancel.js'
import type { ProxyRequest, ProxyResponse } from '../../src/pipeline/types.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('shadowHost: -shadow after the host name, before the port (Envoy, Istio)', async (t) => {
  t.equal(shadowHost('shop.default.svc:8443'), 'shop.default.svc-shadow:8443')
  t.equal(shadowHost('shop.default.svc'), 'shop.default.svc-shadow')
  t.equal(shadowHost('127.0.0.1:80'), '127.0.0.1-shadow:80')
  t.equal(shadowHost('[::1]:8080'), '[::1]-shadow:8080')
  t.equal(shadowHost('[::1]'), '[::1]-shadow')
})

function layer(over: Partial<MirrorOptions> = {}, random = () => 0) {
  const d = deps()
  const clock = fakeClock()
  const sent: Array<{ req: ProxyRequest; signal: Cancel; answer: (r: ProxyResponse) => void; fail: (e: Error) => void }> = []
  const send = (req: ProxyRequest, signal: Cancel) =>
    new Promise<ProxyResponse>((answer, fail) => {
      sent.push({ req, signal, answer, fail })
      signal.onAbort((reason) => fail(reason as Error))
    })
  const app = scripted(...Array.from({ length: 20 }, () => response(200)))
  const opts: MirrorOptions = { backend: 'shadow', percent: 100, maxInFlight: 2, maxBodyBytes: 100, timeoutMs: 1000, ...over }
  const handler = drive(createMirrorLayer(opts, { metrics: d.metrics, clock, random, send }))(app)
  const count = (result: string) => metricValue(d, 'sidecar_mirror_requests_total', { backend: 'shadow', result })
  return { handler, sent, app, clock, count }
}

t.test('a copy per request, the real one untouched; past maxInFlight dropped; the deadline frees a slot', async (t) => {
  const { handler, sent, app, clock, count } = layer()
  const req = proxyRequest({ method: 'POST', headers: { host: 'shop:8443', 'x-a': '1' }, body: Buffer.from('hello') })
  for (let i = 0; i < 3; i++) t.equal((await handler(req, context())).status, 200)
  t.equal(app.calls[0]!.req, req, 'the real request is passed on as it was')
  t.equal(sent.length, 2)
  t.equal(sent[0]!.req.headers.host, 'shop-shadow:8443')
  t.equal(sent[0]!.req.headers['x-a'], '1')
  t.equal(sent[0]!.req.body, req.body, 'a Buffer body is shared, not copied')
  t.equal(await count('dropped'), 1)
  sent[0]!.answer(response(503))
  await new Promise((r) => setImmediate(r))
  t.equal(await count('sent'), 1, 'any answer is sent')
  clock.advance(1000)
  await new Promise((r) => setImmediate(r))
  t.ok(sent[1]!.signal.aborted, 'the held copy is cancelled at its deadline')
  t.equal(await count('failed'), 1)
  await handler(req, context())
  t.equal(sent.length, 3, 'both slots free again')
})

t.test('the draw: random at or above the share copies nothing; upgrades are never copied', async (t) => {
  const { handler, sent } = layer({ percent: 25 }, () => 0.25)
  await handler(proxyRequest(), context())
  t.equal(sent.length, 0)
  const all = layer()
  await all.handler(proxyRequest({ upgrade: 'websocket' }), context())
  t.equal(all.sent.length, 0)
})

t.test('bodies: over the cap skipped; a stream teed without waiting for the copy', async (t) => {
  const { handler, sent, app, count } = layer({ maxBodyBytes: 10 })
  await handler(proxyRequest({ body: Buffer.alloc(11) }), context())
  await handler(proxyRequest({ body: new PassThrough(), contentLength: 11 }), context())
  t.equal(sent.length, 0)
  t.equal(await count('skipped_body'), 2)
  // streamed, no length: the copy gets what fits; the real body all of it, at its own pace
  await handler(proxyRequest({ body: Readable.from([Buffer.from('12345'), Buffer.from('67890'), Buffer.from('abc')]) }), context())
  t.equal(sent.length, 1)
  const real = app.calls.at(-1)!.req.body as Readable
  const chunks: Buffer[] = []
  for await (const c of real) chunks.push(c as Buffer)
  t.equal(Buffer.concat(chunks).toString(), '1234567890abc')
  t.ok((sent[0]!.req.body as Readable).destroyed, 'the copy was cut past the cap')
  sent[0]!.fail(new Error('cut'))
  await new Promise((r) => setImmediate(r))
  t.equal(await count('skipped_body'), 3, 'counted as skipped, not failed')
  t.equal(await count('failed'), undefined)
})

t.test("a streamed answer holds the slot until it ends; a shadow removed by a reload fails the copy", async (t) => {
  const { handler, sent, count } = layer({ maxInFlight: 1 })
  await handler(proxyRequest(), context())
  const answer = new PassThrough()
  sent[0]!.answer(response(200, answer))
  await new Promise((r) => setImmediate(r))
  await handler(proxyRequest(), context())
  t.equal(sent.length, 1, 'still reading the first answer: the second copy is dropped')
  t.equal(await count('dropped'), 1)
  answer.end('thrown away')
  await new Promise((r) => setImmediate(r))
  t.equal(await count('sent'), 1)
  await handler(proxyRequest(), context())
  t.equal(sent.length, 2, 'the slot is free once the answer is over')

  const d = deps()
  const gone = drive(createMirrorLayer(
    { backend: 'shadow', percent: 100, maxInFlight: 1, maxBodyBytes: 100, timeoutMs: 1000 },
    { metrics: d.metrics, clock: fakeClock(), random: () => 0, send: () => undefined },
  ))(scripted(response(200), response(200)))
  const body = new PassThrough()
  t.equal((await gone(proxyRequest({ body }), context())).status, 200, 'the real request goes on')
  t.equal(await metricValue(d, 'sidecar_mirror_requests_total', { backend: 'shadow', result: 'failed' }), 1)
  t.equal((await gone(proxyRequest(), context())).status, 200)
  t.equal(await metricValue(d, 'sidecar_mirror_requests_total', { backend: 'shadow', result: 'failed' }), 2, 'its slot was given back')
})
