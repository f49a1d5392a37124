import t from 'tap'
import { Readiness } from '../../src/admin/readiness.js'

t.test('latches: ready only when none is held; every flip is reported once, with the reasons', async (t) => {
  const flips: Array<[boolean, Record<string, string>]> = []
  const r = new Readiness((ready, holding) => flips.push([ready, holding]))
  r.hold('listener', 'not bound')
  r.hold('backend:app', 'no check yet')
  t.same(r.holding(), { listener: 'not bound', 'backend:app': 'no check yet' })
  r.release('listener')
  t.ok(r.isHeld('backend:app'))
  r.release('backend:app')
  r.release('backend:app')
  r.hold('draining', 'SIGTERM')
  t.same(flips, [
    [false, { listener: 'not bound' }],
    [true, {}],
    [false, { draining: 'SIGTERM' }],
  ])
})
