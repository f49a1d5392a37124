import { writeFileSync } from 'node:fs'
import t from 'tap'
import { applyOverrides, loadConfig, validateConfig } from '../../src/config/load.js'
import { formatPath } from '../../src/config/settings.js'
import { ConfigError } from '../../src/errors.js'
import { problems } from '../fixtures/config.js'


t.test('defaults match the contract', async (t) => {
  const c = validateConfig({})
  t.equal(c.listener.address, '0.0.0.0:8443')
  t.match(c.listener.tls, { minVersion: 'TLSv1.2', handshakeTimeoutMs: 5000 }, 'TLS unless told otherwise')
  t.equal((c.listener.tls as { certFile?: string }).certFile, undefined, 'no certificate: an ephemeral one')
  t.equal(c.listener.http2, true)
  t.equal(c.listener.trustForwardedHeaders, false)
  t.equal(c.admin.address, '127.0.0.1:9901')
  t.match(c.backends, [{ name: 'app', url: 'http://127.0.0.1:8080', weight: 100, healthCheck: { path: '/' } }])
  t.equal(c.backends.length, 1)
  t.ok(c.backends[0]!.idleTimeoutMs < 5000, "upstream idle timeout below Node's default keep-alive (5 s)")
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.backends[0]), 'frozen all the way down')
})

t.test('every problem is reported with its path', async (t) => {
  const found = problems({
    listener: { address: 'nope', headersTimeoutMs: -1, tls: { certFile: 'a' } },
    backends: [
      { name: 'app', url: 'ftp://x' },
      { name: 'app', url: 'http://127.0.0.1:9000/path', weight: 1.5 },
    ],
    limits: { maxBodyBytes: 'big' },
    typo: true,
    log: { level: 'loud', colour: 1 },
  })
  const expected = [
    /^listener\.address: must be host:port/,
    /^listener\.headersTimeoutMs: /,
    /^listener\.tls\.keyFile: required: certFile and keyFile go together/,
    /^backends\[0\]\.url: must be an http:\/\/ or https:\/\/ URL/,
    /^backends\[1\]\.url: must be an http:\/\/ or https:\/\/ URL/,
    /^backends\[1\]\.weight: /,
    /^limits\.maxBodyBytes: /,
    /^typo: unknown key$/,
    /^log\.level: /,
    /^log\.colour: unknown key$/,
  ]
  for (const re of expected) t.ok(found.some((p) => re.test(p)), `reports ${re}`)
})

t.test('tls: client subject header needs a client CA; versions are 1.2 or 1.3', async (t) => {
  t.match(problems({ listener: { tls: { clientSubjectHeader: 'x-client' } } }), [/^listener\.tls\.clientSubjectHeader: needs listener\.tls\.clientCaFile/])
  t.match(problems({ listener: { tls: { minVersion: 'TLSv1.1' } } }), [/^listener\.tls\.minVersion: /])
  t.match(problems({ listener: { tls: true } }), [/^listener\.tls: /])
})

t.test('a missing required key says so', async (t) => {
  t.same(problems({ backends: [{ url: 'http://a:1' }] }), ['backends[0].name: required (string)'])
})

t.test('backends: at least one, unique names, and at least one with weight above 0', async (t) => {
  t.match(problems({ backends: [{ name: 'app', url: 'http://a:1' }, { name: 'app', url: 'http://b:1' }] }), [
    /^backends\[1\]\.name: duplicate backend name "app"/,
  ])
  t.match(problems({ backends: [] }), [/^backends: needs at least one backend/])
  t.match(problems({ backends: [{ name: 'a', url: 'http://a:1', weight: 0 }] }), [/^backends: at least one backend needs a weight above 0/])
})

t.test('listener timeouts must be consistent, and addresses parse', async (t) => {
  t.match(problems({ listener: { headersTimeoutMs: 5000, receiveTimeoutMs: 1000 } }), [/^listener\.headersTimeoutMs: must not exceed listener\.receiveTimeoutMs/])
  t.same(problems({ listener: { address: '[::1]:0' }, admin: { address: 'localhost:65535' } }), [])
  t.match(problems({ admin: { address: 'localhost:65536' } }), [/^admin\.address: must be host:port/])
  t.match(problems('just a string'), [/^\(top level\): /])
})

t.test('overrides from flags replace single keys and keep the rest', async (t) => {
  const raw = { listener: { address: '1.2.3.4:1', tls: { certFile: 'c', keyFile: 'k' } }, backends: [{ name: 'main', url: 'http://a:1', weight: 90 }, { name: 'canary', url: 'http://b:1', weight: 10 }] }
  const c = validateConfig(applyOverrides(raw, { listen: '127.0.0.1:2', upstream: 'http://127.0.0.1:3', admin: '127.0.0.1:4' }))
  t.equal(c.listener.address, '127.0.0.1:2')
  t.equal(c.admin.address, '127.0.0.1:4')
  t.match(c.backends, [{ name: 'main', url: 'http://127.0.0.1:3', weight: 90 }, { name: 'canary', url: 'http://b:1' }])
  t.match(c.listener.tls, { certFile: 'c', keyFile: 'k' })
  t.equal(validateConfig(applyOverrides(raw, { plaintext: true })).listener.tls, false)
  t.match(validateConfig(applyOverrides({}, { tlsCert: 'x.pem', tlsKey: 'y.pem' })).listener.tls, { certFile: 'x.pem', keyFile: 'y.pem' })
  t.equal(raw.listener.address, '1.2.3.4:1', 'the input is not mutated')
  t.match(problems(applyOverrides({}, { upstream: 'not a url' })), [/^backends\[0\]\.url: /], 'a bad flag is named by the key it sets')
})

t.test('files: YAML and JSON load; unreadable, unparsable and empty files', async (t) => {
  const dir = t.testdir({
    'good.yaml': 'listener:\n  address: 127.0.0.1:1\nbackends:\n  - name: app\n    url: http://127.0.0.1:2\n',
    'good.json': JSON.stringify({ admin: { address: '127.0.0.1:3' } }),
    'broken.yaml': 'listener: [unclosed\n',
    'empty.yaml': '',
    'bad.yaml': 'backends:\n  - name: app\n    url: nope\n',
  })
  t.equal((await loadConfig(`${dir}/good.yaml`)).listener.address, '127.0.0.1:1')
  t.equal((await loadConfig(`${dir}/good.json`)).admin.address, '127.0.0.1:3')
  t.equal((await loadConfig(`${dir}/empty.yaml`)).listener.address, '0.0.0.0:8443')
  t.equal((await loadConfig(undefined, { listen: '127.0.0.1:9' })).listener.address, '127.0.0.1:9')
  await t.rejects(loadConfig(`${dir}/missing.yaml`), { code: 'config_invalid', problems: [/^cannot read the file: /] })
  await t.rejects(loadConfig(`${dir}/broken.yaml`), { code: 'config_invalid', problems: [/^not valid YAML or JSON \(line \d+, column \d+\): [^\n]*[^:\n]$/] }, 'one line, where, and no dangling colon')
  await t.rejects(loadConfig(`${dir}/bad.yaml`), { message: /bad\.yaml[\s\S]*backends\[0\]\.url: must be an http:\/\/ or https:\/\/ URL/ })
  writeFileSync(`${dir}/good.yaml`, 'typo: 1\n')
  await t.rejects(loadConfig(`${dir}/good.yaml`), new ConfigError(`${dir}/good.yaml`, ['typo: unknown key']))
})

t.test('formatPath', async (t) => {
  t.equal(formatPath(['backends', 0, 'healthCheck', 'path']), 'backends[0].healthCheck.path')
  t.equal(formatPath([]), '')
})

t.test('routing: the canary must name a backend, header and cookie names are checked', async (t) => {
  const two = [{ name: 'app', url: 'http://127.0.0.1:1' }, { name: 'canary', url: 'http://127.0.0.1:2' }]
  t.same(problems({ backends: two, routing: { canary: 'nope' } }), ['routing.canary: names no backend ("nope")'])
  t.equal(validateConfig({ backends: two, routing: { canary: 'app' } }).routing.canary, 'app')
  t.same(problems({ routing: { header: 'X Bad' } }), ['routing.header: must be a lower-case header name'])
  t.match(problems({ routing: { sticky: { cookie: 'a;b' } } }), [/^routing\.sticky\.cookie: must be a cookie name/])
  t.same(validateConfig({ routing: { sticky: {} } }).routing.sticky, { cookie: 'sidecar-backend', maxAgeSeconds: 86400 })
})

t.test('near-miss keys get a "did you mean"; a duplicate name is reported with the other problems', async (t) => {
  const found = problems({
    listener: { adress: '0.0.0.0:1', tls: { certfile: 'x' } },
    backends: [
      { name: 'app', url: 'http://127.0.0.1:1', wieght: 5 },
      { name: 'app', url: 'ftp://x' },
    ],
    limits: { maxBodyByte: 3 },
    frobnicate: true,
  })
  t.same(
    found.filter((p) => p.includes('unknown key')).sort(),
    [
      'listener.adress: unknown key; did you mean "address"?',
      'listener.tls.certfile: unknown key; did you mean "certFile"?',
      'backends[0].wieght: unknown key; did you mean "weight"?',
      'limits.maxBodyByte: unknown key; did you mean "maxBodyBytes"?',
      'frobnicate: unknown key',
    ].sort(),
  )
  t.ok(found.includes('backends[1].name: duplicate backend name "app"'), 'the duplicate name too')
  t.ok(found.some((p) => p.startsWith('backends[1].url: ')), 'and the bad url')
})

t.test('gRPC backends: h2c over http://, the gRPC health check only with h2c, gRPC retry conditions', async (t) => {
  t.same(problems({ backends: [{ name: 'app', url: 'http://127.0.0.1:1', protocol: 'h2c', healthCheck: { grpc: {} } }], retry: { retryOn: ['unavailable', 'refused'] } }), [])
  t.match(problems({ backends: [{ name: 'app', url: 'http://127.0.0.1:1', healthCheck: { grpc: { service: 'shop' } } }] }), [/^backends\[0\]\.healthCheck\.grpc: needs protocol: h2c/])
  t.match(problems({ backends: [{ name: 'app', url: 'https://shop:8443', protocol: 'h2c' }] }), [/^backends\[0\]\.protocol: h2c is HTTP\/2 in the clear/])
  t.match(problems({ backends: [{ name: 'app', url: 'http://127.0.0.1:1', protocol: 'h3' }] }), [/^backends\[0\]\.protocol: /])
  t.equal(validateConfig({}).backends[0]!.protocol, 'http1', 'HTTP/1.1 unless told')
})

t.test('backends[].concurrency: exactly one of adaptive or fixed, bounds in order, each problem at its path', async (t) => {
  const of = (concurrency: unknown) => problems({ backends: [{ name: 'app', url: 'http://127.0.0.1:8080', concurrency }] })
  t.same(of({}), ['backends[0].concurrency: takes exactly one of adaptive: {...} or fixed: N'])
  t.same(of({ adaptive: {}, fixed: 3 }), ['backends[0].concurrency: takes exactly one of adaptive: {...} or fixed: N'])
  t.same(of({ adaptive: { min: 50, max: 10 } }), ['backends[0].concurrency.adaptive.min: must not exceed max'])
  t.same(of({ fixed: 0 }), ['backends[0].concurrency.fixed: Too small: expected number to be >=1'])
  const adaptive = validateConfig({ backends: [{ name: 'app', url: 'http://127.0.0.1:8080', concurrency: { adaptive: {} } }] }).backends[0]!.concurrency
  t.same(adaptive, { adaptive: { min: 3, max: 1000, sampleWindowMs: 100, percentile: 0.5, tolerance: 0.25, minRttIntervalMs: 60_000, minRttRequests: 50, jitter: 0.1 }, maxWaitMs: 1000 }, "Envoy's defaults, a 1 s wait")
})
