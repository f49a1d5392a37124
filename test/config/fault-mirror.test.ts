// fault: and mirror: at the top level and per route: validated with paths, the mirror's backend
// checked against the backends (with a guess at a typo), a route's setting replacing the top's.
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { validateConfig } from '../../src/config/load.js'
import { defaultCanary, routeSetting } from '../../src/config/settings.js'
import { main } from '../../src/main.js'
import { problems } from '../fixtures/config.js'

const backends = [
  { name: 'app', url: 'http://127.0.0.1:8080' },
  { name: 'shadow', url: 'http://10.0.0.9:8080', weight: 0 },
]

t.test('defaults: mirror percent 100, maxInFlight 64; headerControl off', async (t) => {
  const c = validateConfig({ backends, mirror: { backend: 'shadow' }, fault: { abort: { status: 503, percent: 0.5 } } })
  t.same(c.mirror, { backend: 'shadow', percent: 100, maxInFlight: 64 })
  t.same(c.fault, { abort: { status: 503, percent: 0.5 }, headerControl: false })
  t.equal(c.backends[1]!.gatesReadiness, false)
})

t.test('every problem with its path', async (t) => {
  const found = problems({
    backends,
    mirror: { backend: 'shadw', percent: -1 },
    fault: {},
    routes: [
      { name: 'a', fault: { delay: { ms: 0, percent: 10 } } },
      { name: 'b', fault: { abort: { status: 503, percent: 101, grpcStatus: 0 } }, mirror: { backend: 'nothing-like-it', maxInFlight: 0 } },
      { name: 'c', direct: { status: 404 }, mirror: { backend: 'shadow' } },
    ],
  })
  t.match(found.join('\n'), /mirror\.backend: no backend named "shadw"; did you mean "shadow"\?/)
  t.match(found.join('\n'), /mirror\.percent: must be >= 0/)
  t.match(found.join('\n'), /(^|\n)fault: needs delay, abort or headerControl: true/)
  t.match(found.join('\n'), /routes\[0\]\.fault\.delay\.ms:/)
  t.match(found.join('\n'), /routes\[1\]\.fault\.abort\.percent: must be <= 100/)
  t.match(found.join('\n'), /routes\[1\]\.fault\.abort\.grpcStatus:/)
  t.match(found.join('\n'), /routes\[1\]\.mirror\.maxInFlight:/)
  t.match(found.join('\n'), /routes\[2\]\.mirror: has no meaning with direct/)
  t.notMatch(found.join('\n'), /did you mean "nothing/)
})

t.test("a route's setting replaces the top level's; false turns it off", async (t) => {
  const top = { backend: 'shadow', percent: 100, maxInFlight: 64 }
  t.equal(routeSetting(top, undefined), top)
  t.equal(routeSetting(top, false), undefined)
  const own = { backend: 'app', percent: 5, maxInFlight: 1 }
  t.equal(routeSetting(top, own), own)
  t.equal(routeSetting(undefined, undefined), undefined)
})

t.test('validate prints what is set', async (t) => {
  const dir = t.testdir({
    'c.yaml': `
backends:
  - name: app
    url: http://127.0.0.1:8080
  - name: shadow
    url: http://10.0.0.9:8080
    weight: 0
mirror: { backend: shadow, percent: 10 }
fault: { delay: { ms: 100, percent: 5 }, headerControl: true }
routes:
  - name: pay
    match: { pathPrefix: /pay }
    fault: false
    mirror: false
  - name: search
    match: { pathPrefix: /search }
    fault: { abort: { status: 503, grpcStatus: 14, percent: 1 } }
`,
  })
  const out: string[] = []
  const io: Io = { out: (l) => out.push(l), err: (l) => out.push(l) }
  t.equal(await main(['validate', '--config', `${dir}/c.yaml`], io), 0)
  const text = out.join('\n')
  t.match(text, /pay  \/pay\*  -> no fault, no mirror/)
  t.match(text, /search  \/search\*  -> fault: abort 503 grpc 14 \(1%\)/)
  t.match(text, /default  every other request: the top-level settings  -> fault: delay 100 ms \(5%\), by header, mirror 10% to shadow \(64 at once\)/)
  const bad = t.testdir({ 'c.yaml': 'backends: [{ name: shadow, url: "http://127.0.0.1:1" }]\nroutes: [{ name: a }, { name: b, fault: { abort: { status: 503, percent: 200 } } }]\n' })
  const errs: string[] = []
  t.equal(await main(['validate', '--config', `${bad}/c.yaml`], { out: (l) => errs.push(l), err: (l) => errs.push(l) }), 2)
  t.match(errs.join('\n'), /routes\[1\]\.fault\.abort\.percent: must be <= 100/)
})

t.test('a shadow-only backend is never a target of the override header', async (t) => {
  const mirror = { backend: 'shadow' }
  t.same(problems({ backends, mirror }), [], 'app + shadow: the default canary passes the shadow by')
  t.equal(defaultCanary(validateConfig({ backends, mirror })), undefined, 'no canary at all: "always" leaves it to the weights')
  const three = [...backends, { name: 'canary', url: 'http://10.0.0.3:8080', weight: 10 }]
  t.equal(defaultCanary(validateConfig({ backends: three, mirror })), 'canary', 'the next backend that is no shadow')
  t.equal(defaultCanary(validateConfig({ backends })), 'shadow', 'nobody mirrors to it: a weight-0 canary tried by hand, as before')
  t.match(problems({ backends, mirror, routing: { canary: 'shadow' } }).join('\n'), /routing\.canary: "shadow" takes mirrored copies only/)
  t.match(problems({ backends: [backends[1], backends[0]], mirror }).join('\n'), /backends\[0\]: "shadow" takes mirrored copies only/)
  t.same(problems({ backends: [backends[1], backends[0]], mirror, routing: { header: false } }), [])
  t.same(problems({ backends: [backends[0], { ...backends[1], weight: 5 }], mirror, routing: { canary: 'shadow' } }), [], 'a shadow with traffic of its own is a backend like any')
})
