// Watching mounted files, with real file events and the debounce on the fake clock: what counts
// is what the watcher arms, not how fast the file system is.
import { writeFileSync } from 'node:fs'
import t from 'tap'
import { createLogger } from '../src/log.js'
import { relevantTo, watchFiles } from '../src/watch.js'
import { until } from './fixtures/client.js'
import { fakeClock } from './fixtures/clock.js'
import { MountedDir } from './fixtures/mount.js'

const logger = createLogger({ level: 'silent' })

t.test('which entries of the directory matter', async (t) => {
  const relevant = relevantTo(['/etc/sidecar/config.yaml'])
  t.ok(relevant('config.yaml'), 'the file')
  t.ok(relevant('..data'), "the kubelet's swap")
  t.ok(relevant('..2026_11_27_10_00_00.123'), 'its versioned directory')
  t.ok(relevant(null), 'an event that names nothing')
  t.notOk(relevant('access.log'), 'a log written beside it')
  t.notOk(relevant('config.yaml.swp'), "an editor's swap file")
})

t.test('a burst of writes to the watched file is one call after the quiet period', async (t) => {
  const dir = t.testdir({ 'config.yaml': 'a: 1\n' })
  const clock = fakeClock()
  let calls = 0
  const stop = watchFiles([`${dir}/config.yaml`], () => calls++, { logger, debounceMs: 50, clock })
  t.teardown(stop)
  for (let i = 0; i < 5; i++) writeFileSync(`${dir}/config.yaml`, `a: ${i}\n`)
  await until(() => clock.timeouts.length > 0)
  t.equal(calls, 0, 'nothing before the quiet period')
  clock.advance(49)
  t.equal(calls, 0)
  clock.advance(1)
  t.equal(calls, 1, `one call for ${clock.timeouts.length} events seen so far`)
})

t.test('the kubelet swapping ..data is seen; after stop nothing is armed', async (t) => {
  const mount = new MountedDir(t.testdir(), ['config.yaml'])
  mount.update({ 'config.yaml': 'a: 1\n' })
  const clock = fakeClock()
  let calls = 0
  const stop = watchFiles([mount.path('config.yaml')], () => calls++, { logger, debounceMs: 50, clock })
  mount.update({ 'config.yaml': 'a: 2\n' })
  await until(() => clock.timeouts.length > 0)
  clock.advance(50)
  t.equal(calls, 1)
  stop()
  const armed = clock.timeouts.length
  mount.update({ 'config.yaml': 'a: 3\n' })
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(clock.timeouts.length, armed, 'no event reaches a stopped watcher')
  clock.advance(1000)
  t.equal(calls, 1)
})
