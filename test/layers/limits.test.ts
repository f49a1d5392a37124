import { Readable } from 'node:stream'
import t from 'tap'
import { createLimitsLayer } from '../../src/layers/limits.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

const opts = { maxHeaderCount: 5, maxBodyBytes: 100 }

t.test('header count over the cap: 431 headers_too_large, nothing forwarded', async (t) => {
  const d = deps()
  const next = scripted(response())
  await t.rejects(drive(createLimitsLayer(opts, d))(next)(proxyRequest({ headerCount: 6 }), context()), { code: 'headers_too_large', status: 431 })
  t.equal(next.calls.length, 0)
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'headers_too_large' }), 1)
  await drive(createLimitsLayer(opts, d))(next)(proxyRequest({ headerCount: 5 }), context())
  t.equal(next.calls.length, 1, 'exactly the cap passes')
})

t.test('declared body over the cap: 413 before forwarding; at the cap it is forwarded as is', async (t) => {
  const d = deps()
  const next = scripted(response())
  const body = Readable.from([Buffer.alloc(1)])
  await t.rejects(drive(createLimitsLayer(opts, d))(next)(proxyRequest({ body, contentLength: 101 }), context()), { code: 'body_too_large', status: 413 })
  t.equal(next.calls.length, 0)
  await drive(createLimitsLayer(opts, d))(next)(proxyRequest({ body, contentLength: 100 }), context())
  t.equal(next.calls[0]?.req.body, body, 'a declared length is enforced by the parser: no extra stream')
})

t.test('a chunked body is counted as it streams and errors past the cap', async (t) => {
  const d = deps()
  const next = scripted(response(), response())
  const layer = drive(createLimitsLayer(opts, d))(next)
  await layer(proxyRequest({ body: Readable.from([Buffer.alloc(60), Buffer.alloc(40)]) }), context())
  const within: Buffer[] = []
  for await (const c of next.calls[0]!.req.body!) within.push(c as Buffer)
  t.equal(Buffer.concat(within).length, 100)

  await layer(proxyRequest({ body: Readable.from([Buffer.alloc(60), Buffer.alloc(41)]) }), context())
  const over = next.calls[1]!.req.body!
  await t.rejects(
    (async () => {
      for await (const _ of over) void _
    })(),
    { code: 'body_too_large' },
  )
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'body_too_large' }), 1)
})

t.test('an error on the client body reaches the counted stream', async (t) => {
  const d = deps()
  const next = scripted(response())
  const source = new Readable({ read() {} })
  await drive(createLimitsLayer(opts, d))(next)(proxyRequest({ body: source }), context())
  const counted = next.calls[0]!.req.body as Readable
  const failed = new Promise((resolve) => counted.once('error', resolve))
  source.destroy(new Error('aborted'))
  t.match(await failed, { message: 'aborted' })
})

t.test('requests without a body pass straight through', async (t) => {
  const next = scripted(response(204))
  const res = await drive(createLimitsLayer(opts, deps()))(next)(proxyRequest(), context())
  t.equal(res.status, 204)
})
