import { Readable } from 'node:stream'
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createRespondLayer } from '../../src/layers/respond.js'
import type { Handler, ProxyResponse } from '../../src/pipeline/types.js'
import { context, drive, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('responses pass through untouched', async (t) => {
  const ok = response(200)
  const ctx = context()
  t.equal(await drive(createRespondLayer())(scripted(ok))(proxyRequest(), ctx), ok)
  t.equal(ctx.error, undefined)
})

t.test('a SidecarError becomes its status, x-sidecar-error and a JSON body; the code goes on the context', async (t) => {
  const ctx = context({ id: 'abc' })
  const res = await drive(createRespondLayer())(scripted(new SidecarError('upstream_timeout', { detail: 'after 1 ms' })))(proxyRequest(), ctx)
  t.equal(res.status, 504)
  t.equal(res.headers['x-sidecar-error'], 'upstream_timeout')
  t.equal(res.headers['content-type'], 'application/json')
  const body = res.body as Buffer
  t.equal(res.headers['content-length'], String(body.length))
  t.match(JSON.parse(body.toString()), { error: 'upstream_timeout', requestId: 'abc', message: /after 1 ms/ })
  t.equal(ctx.error, 'upstream_timeout')
})

t.test('anything else thrown becomes 500 internal, never a crash', async (t) => {
  const ctx = context()
  const res = await drive(createRespondLayer())(scripted(new TypeError('bug')))(proxyRequest(), ctx)
  t.equal(res.status, 500)
  t.equal(res.headers['x-sidecar-error'], 'internal')
  t.equal(ctx.error, 'internal')
})

t.test('a layer below that throws instead of rejecting still gets its local reply', async (t) => {
  const ctx = context()
  const throwing = () => {
    throw new SidecarError('overloaded')
  }
  const res = await drive(createRespondLayer())(throwing)(proxyRequest(), ctx)
  t.equal(res.status, 503)
  t.equal(res.headers['x-sidecar-error'], 'overloaded')
  t.equal(ctx.error, 'overloaded')
})

t.test('a layer below that answers twice (a bug): the caller is answered once, the second body let go', async (t) => {
  const first = response(200)
  const second = response(502, Readable.from(['late']))
  const ctx = context()
  const answers: ProxyResponse[] = []
  const twice: Handler = (_req, _ctx, reply) => {
    reply.ok(first)
    reply.ok(second)
    reply.fail(new SidecarError('upstream_reset'))
    throw new Error('and then a throw')
  }
  createRespondLayer()(twice)(proxyRequest(), ctx, { ok: (res) => answers.push(res), fail: (err) => t.fail(String(err)) })
  t.same(answers, [first], 'only the first answer goes up')
  t.equal((second.body as Readable).destroyed, true, "the second answer's body is destroyed")
  t.equal(ctx.error, undefined, 'the later failure names no error')
})
