// The running proxy's config goes through a worker thread: the answer must be what loadConfig
// gives in the same thread, a config as much as each kind of failure.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../../src/config/load.js'
import { loadConfigInWorker } from '../../src/config/worker.js'
import { ConfigError } from '../../src/errors.js'

const dir = mkdtempSync(join(tmpdir(), 'sidecar-worker-'))
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text)
  return join(dir, name)
}

t.test('a valid file: the same config, frozen all the way down', async (t) => {
  const yaml = file(
    'good.yaml',
    ['listener: { address: "127.0.0.1:1", tls: false }', 'backends:', '  - { name: app, url: "http://127.0.0.1:8080" }', '  - { name: canary, url: "http://10.0.0.2:8080", weight: 10 }', 'routes:', '  - { name: api, match: { pathPrefix: /api }, timeoutMs: 300 }'].join('\n'),
  )
  const overrides = { admin: '127.0.0.1:5', upstream: 'http://127.0.0.1:9000' }
  const apart = await loadConfigInWorker(yaml, overrides)
  t.same(apart, await loadConfig(yaml, overrides), 'equal to the one read in this thread')
  t.equal(apart.admin.address, '127.0.0.1:5', 'the overrides reach the worker')
  t.equal(apart.backends[0]!.url, 'http://127.0.0.1:9000')
  t.equal(apart.backends[0]!.gatesReadiness, true, 'a default the schema derives')
  t.ok(Object.isFrozen(apart) && Object.isFrozen(apart.routes[0]!.match), 'frozen')
  t.same(await loadConfigInWorker(undefined, { listen: '127.0.0.1:9' }), await loadConfig(undefined, { listen: '127.0.0.1:9' }), 'no file: defaults and flags')
})

t.test('an invalid file: the same ConfigError, every problem with its path', async (t) => {
  const bad = file('bad.yaml', 'backends: [{ name: app, url: "ftp://x" }]\nlistner: {}\n')
  const here = await loadConfig(bad).then(
    () => t.fail('accepted'),
    (err: unknown) => err,
  )
  t.ok(here instanceof ConfigError)
  const apart = await loadConfigInWorker(bad).then(
    () => t.fail('accepted'),
    (err: unknown) => err,
  )
  t.ok(apart instanceof ConfigError, 'a ConfigError, so the CLI exits 2 with its message')
  t.same(apart, here, 'the same source and problems')
  t.match((apart as ConfigError).problems, [/^backends\[0\]\.url: /, /^listner: unknown key; did you mean "listener"\?/])
  await t.rejects(loadConfigInWorker(file('broken.yaml', 'a: [')), { code: 'config_invalid', problems: [/^not valid YAML or JSON \(line \d+, column \d+\)/] })
  await t.rejects(loadConfigInWorker(join(dir, 'missing.yaml')), { code: 'config_invalid', problems: [/^cannot read the file: /] })
})
