import t from 'tap'
import { compose } from '../../src/pipeline/compose.js'
import type { Layer } from '../../src/pipeline/types.js'
import { context, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('compose runs layers outermost first, down to the terminal, and back up', async (t) => {
  const order: string[] = []
  const tag =
    (name: string): Layer =>
    (next) =>
    async (req, ctx) => {
      order.push(`${name} in`)
      const res = await next(req, ctx)
      order.push(`${name} out`)
      return res
    }
  const terminal = scripted(response(204))
  const handler = compose([tag('a'), tag('b'), tag('c')], terminal)
  const res = await handler(proxyRequest(), context())
  t.equal(res.status, 204)
  t.same(order, ['a in', 'b in', 'c in', 'c out', 'b out', 'a out'])
  t.equal(terminal.calls.length, 1)
})

t.test('compose with no layers is the terminal itself', async (t) => {
  const terminal = scripted(response(200))
  t.equal(compose([], terminal), terminal)
})
