import { writeFileSync } from 'node:fs'
import t from 'tap'
import { createLogger } from '../src/log.js'
import { watchFiles } from '../src/watch.js'
import { MountedDir } from './fixtures/mount.js'

const logger = createLogger({ level: 'silent' })
const settle = () => new Promise((resolve) => setTimeout(resolve, 300))

t.test('a burst of writes to the watched file is one call; other files in the directory are ignored', async (t) => {
  const dir = t.testdir({ 'config.yaml': 'a: 1\n', 'access.log': '' })
  let calls = 0
  const stop = watchFiles([`${dir}/config.yaml`], () => calls++, { logger, debounceMs: 50 })
  t.teardown(stop)
  for (let i = 0; i < 20; i++) writeFileSync(`${dir}/access.log`, `line ${i}\n`, { flag: 'a' })
  await settle()
  t.equal(calls, 0, 'a log written beside the config triggers nothing')
  for (let i = 0; i < 5; i++) writeFileSync(`${dir}/config.yaml`, `a: ${i}\n`)
  await settle()
  t.equal(calls, 1, 'five writes in a row: one reload')
})

t.test('the kubelet swapping ..data is seen; after stop nothing is', async (t) => {
  const mount = new MountedDir(t.testdir(), ['config.yaml'])
  mount.update({ 'config.yaml': 'a: 1\n' })
  let calls = 0
  const stop = watchFiles([mount.path('config.yaml')], () => calls++, { logger, debounceMs: 50 })
  mount.update({ 'config.yaml': 'a: 2\n' })
  await settle()
  t.equal(calls, 1)
  stop()
  mount.update({ 'config.yaml': 'a: 3\n' })
  await settle()
  t.equal(calls, 1)
})
