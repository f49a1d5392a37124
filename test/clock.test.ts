import t from 'tap'
import { systemClock } from '../src/clock.js'
import { Cancel } from '../src/pipeline/cancel.js'

t.test('systemClock: sleep resolves, an abort rejects it with the reason, timeouts can be cancelled', async (t) => {
  await systemClock.sleep(1)
  const ac = new Cancel()
  const sleeping = systemClock.sleep(60_000, ac)
  ac.abort(new Error('gone'))
  await t.rejects(sleeping, { message: 'gone' })
  await t.rejects(systemClock.sleep(1, ac), { message: 'gone' }, 'an aborted signal rejects at once')
  let fired = 0
  systemClock.timeout(1, () => fired++)
  systemClock.timeout(1, () => fired++)()
  await systemClock.sleep(20)
  t.equal(fired, 1, 'the cancelled one never fired')
  const before = systemClock.now()
  await systemClock.sleep(20)
  t.ok(systemClock.now() - before >= 15, 'now() moves with real time: a 20 ms sleep shows on it')
})
