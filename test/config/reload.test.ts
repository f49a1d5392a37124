import t from 'tap'
import { validateConfig } from '../../src/config/load.js'
import { configVersion, effectiveConfig } from '../../src/config/reload.js'

const base = { listener: { address: '0.0.0.0:8443' }, backends: [{ name: 'app', url: 'http://127.0.0.1:8080', weight: 90 }, { name: 'canary', url: 'http://10.0.0.9:8080', weight: 10 }] }

t.test('restart-only settings keep their running value and are reported', async (t) => {
  const running = validateConfig(base)
  const next = validateConfig({
    ...base,
    listener: { address: '0.0.0.0:9443', http2: false },
    admin: { address: '127.0.0.1:9999' },
    limits: { maxHeaderBytes: 32768, requestTimeoutMs: 1000 },
    backends: [{ ...base.backends[0], weight: 50 }, { ...base.backends[1], weight: 50 }],
  })
  const { config, pendingRestart } = effectiveConfig(running, next)
  t.same(pendingRestart, ['listener', 'admin', 'limits.maxHeaderBytes'])
  t.equal(config.listener.address, '0.0.0.0:8443', 'the socket already bound stays')
  t.equal(config.listener.http2, true)
  t.equal(config.admin.address, '127.0.0.1:9901')
  t.equal(config.limits.maxHeaderBytes, 16384)
  t.equal(config.limits.requestTimeoutMs, 1000, 'what can change live does')
  t.same(config.backends.map((b) => b.weight), [50, 50])
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.limits), 'frozen like a loaded config')
})

t.test('the version follows the content, not key order', async (t) => {
  const a = validateConfig(base)
  const b = validateConfig({ backends: base.backends, listener: base.listener })
  t.equal(configVersion(a), configVersion(b))
  t.match(configVersion(a), /^[0-9a-f]{12}$/)
  t.not(configVersion(a), configVersion(validateConfig({ ...base, retry: { attempts: 3 } })))
})

t.test('a backend on loopback gates readiness by default, a remote one does not', async (t) => {
  const c = validateConfig({
    backends: [
      { name: 'app', url: 'http://127.0.0.1:8080' },
      { name: 'local', url: 'http://localhost:8081' },
      { name: 'six', url: 'http://[::1]:8082' },
      { name: 'canary', url: 'http://canary.shop.svc:8080' },
      { name: 'forced', url: 'http://canary.shop.svc:8080', gatesReadiness: true },
    ],
  })
  t.same(c.backends.map((b) => b.gatesReadiness), [true, true, true, false, true])
})
