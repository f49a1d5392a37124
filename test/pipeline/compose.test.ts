import t from 'tap'
import { compose, pass } from '../../src/pipeline/compose.js'
import type { Handler, Layer, ProxyResponse, Reply } from '../../src/pipeline/types.js'
import { context, fromAsync, promised, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('compose runs layers outermost first, down to the terminal, and back up', async (t) => {
  const order: string[] = []
  const tag =
    (name: string): Layer =>
    (next) =>
    (req, ctx, reply) => {
      order.push(`${name} in`)
      next(req, ctx, {
        ok: (res) => {
          order.push(`${name} out`)
          reply.ok(res)
        },
        fail: (err) => reply.fail(err),
      })
    }
  const terminal = scripted(response(204))
  const handler = compose([tag('a'), tag('b'), tag('c')], fromAsync(terminal))
  const res = await promised(handler)(proxyRequest(), context())
  t.equal(res.status, 204)
  t.same(order, ['a in', 'b in', 'c in', 'c out', 'b out', 'a out'])
  t.equal(terminal.calls.length, 1)
})

t.test('compose with no layers is the terminal itself', async (t) => {
  const terminal = fromAsync(scripted(response(200)))
  t.equal(compose([], terminal), terminal)
})

t.test('pass: a handler that throws before answering fails the reply instead', async (t) => {
  const outcomes: Array<ProxyResponse | unknown> = []
  const reply: Reply = { ok: (res) => outcomes.push(res), fail: (err) => outcomes.push(err) }
  const bug = new TypeError('bug')
  const throwing: Handler = () => {
    throw bug
  }
  pass(throwing, proxyRequest(), context(), reply)
  t.same(outcomes, [bug], 'answered once, with the error')
  const ok = response(200)
  pass((_req, _ctx, r) => r.ok(ok), proxyRequest(), context(), reply)
  t.equal(outcomes[1], ok, 'a handler that answers is left alone')
})
