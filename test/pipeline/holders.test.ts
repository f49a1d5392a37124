// The holders list (pipeline/holders.ts): its order and removal, and why it exists: holders
// that come and go per request leave nothing for V8 to promote, where a long-lived Set does.
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { Holders } from '../../src/pipeline/holders.js'

t.test('oldest first; a place removed once, in any position, and removed again harmlessly', async (t) => {
  const list = new Holders<string>()
  const [a, b, c] = ['a', 'b', 'c'].map((x) => list.add(x))
  t.same([...list].map((p) => p.holder), ['a', 'b', 'c'])
  list.remove(b!)
  t.same([...list].map((p) => p.holder), ['a', 'c'], 'from the middle')
  list.remove(b!)
  t.equal(list.size, 2, 'a second removal changes nothing')
  list.remove(a!)
  list.remove(c!)
  t.same([...list], [], 'from either end, to empty')
  t.equal(list.size, 0)
  const d = list.add('d')
  list.add('e')
  t.same([...list].map((p) => p.holder), ['d', 'e'], 'usable again once empty')
  for (const place of list) list.remove(place)
  t.equal(list.size, 0, 'the place just given may be removed while iterating')
  t.notOk(d.listed)
})

t.test('holders that come and go leave nothing to promote to the old generation (a Set does)', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as (o?: { type: 'minor' }) => void
  setFlagsFromString('--no-expose-gc')
  const oldSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')!.space_used_size
  /** Old-space growth over 10,000 requests' holders, each added and removed, a young
   *  collection after every 500 (as under load). */
  const promoted = (add: (x: object) => void) => {
    gc()
    const before = oldSpace()
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 500; i++) add({ payload: new Array(64).fill(round) })
      gc({ type: 'minor' })
    }
    return oldSpace() - before
  }
  const set = new Set<object>()
  const viaSet = promoted((x) => (set.add(x), set.delete(x)))
  const list = new Holders<object>()
  // the least of three: what else the process allocates meanwhile (the test runner's own) is
  // promoted too, now and then
  const viaList = Math.min(...[1, 2, 3].map(() => promoted((x) => list.remove(list.add(x)))))
  t.ok(viaSet > 500_000, `the check sees it: a long-lived Set promotes ${viaSet} bytes`)
  t.ok(viaList < viaSet / 5, `the list promotes ${viaList} bytes`)
})
