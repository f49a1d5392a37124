import t from 'tap'
import { Cancel, type CancelListener } from '../../src/pipeline/cancel.js'

/** A listener object that records what it was told. */
function recorder(): CancelListener & { told: unknown[] } {
  const told: unknown[] = []
  return { told, cancelled: (reason) => void told.push(reason) }
}

t.test('every listener still registered is told once, objects and functions alike', async (t) => {
  const cancel = new Cancel()
  const [a, b, c] = [recorder(), recorder(), recorder()]
  const calls: unknown[] = []
  cancel.add(a)
  const off = cancel.onAbort((reason) => calls.push(reason))
  cancel.add(b)
  cancel.add(c)
  cancel.remove(b)
  off()
  cancel.abort('first')
  cancel.abort('second')
  t.same(a.told, ['first'], 'told once, with the first reason')
  t.same(c.told, ['first'])
  t.same(b.told, [], 'a removed object is not told')
  t.same(calls, [], 'nor a function whose unregister ran')
  t.equal(cancel.reason, 'first')
})

t.test('the first listener removed, later ones are still told', async (t) => {
  const cancel = new Cancel()
  const [a, b, c] = [recorder(), recorder(), recorder()]
  cancel.add(a)
  cancel.add(b)
  cancel.remove(a)
  cancel.add(c)
  cancel.abort('gone')
  t.same([a.told, b.told, c.told], [[], ['gone'], ['gone']])
})

t.test('a listener added after the abort is told at once; a child Cancel aborts with its parent', async (t) => {
  const parent = new Cancel()
  const child = new Cancel()
  parent.add(child)
  parent.abort('client left')
  t.ok(child.aborted)
  t.equal(child.reason, 'client left')
  const late = recorder()
  parent.add(late)
  t.same(late.told, ['client left'])
  let ran = 0
  const off = parent.onAbort(() => ran++)
  off()
  t.equal(ran, 1)
})
