// The routes: key of the config: validated whole, every problem with its path; a route's retry
// merged over the top level's.
import t from 'tap'
import { validateConfig } from '../../src/config/load.js'
import { routeRetry } from '../../src/config/settings.js'
import { problems } from '../fixtures/config.js'


const backends = [
  { name: 'app', url: 'http://127.0.0.1:8080' },
  { name: 'canary', url: 'http://127.0.0.1:8081', weight: 0 },
]

t.test('no routes: the top level is the only (default) route', async (t) => {
  t.same(validateConfig({}).routes, [])
})

t.test('a valid table, with its defaults', async (t) => {
  const c = validateConfig({
    backends,
    routes: [
      { name: 'upload', match: { pathPrefix: '/upload/', methods: ['POST', 'PUT'] }, limits: { maxBodyBytes: 1 }, timeoutMs: 0 },
      { name: 'login', match: { path: '/login' }, rateLimit: { requestsPerSecond: 2.5 } },
      { name: 'api', match: { pathRegex: '^/api/v[0-9]+/', headers: { 'x-tenant': 'a', 'x-key': { regex: '^k[0-9]+$' } } }, weights: { canary: 1 } },
      { name: 'internal', match: { pathPrefix: '/internal/' }, direct: { status: 404 } },
      { name: 'all' },
    ],
  })
  t.match(c.routes[0], { name: 'upload', timeoutMs: 0, limits: { maxBodyBytes: 1 } })
  t.same(c.routes[1]!.rateLimit, { requestsPerSecond: 2.5, burst: 3, key: 'route', maxKeys: 10_000 }, 'burst defaults to one second of requests')
  t.same(c.routes[3]!.direct, { status: 404, body: '' })
  t.same(c.routes[4]!.match, {}, 'no match: every request')
})

t.test('every problem with its path', async (t) => {
  const found = problems({
    backends,
    routes: [
      { name: 'default' },
      { name: 'a', match: { pathPrefix: '/a', path: '/a' } },
      { name: 'b', match: { pathRegex: '^/(a+)+$' } },
      { name: 'b', match: { headers: { 'X-Upper': 'v', 'x-ok': { regex: '(x|xx)*' } } } },
      { name: 'c', weights: { app: 0, nope: 5 } },
      { name: 'd', direct: { status: 404 }, retry: { attempts: 1 }, timeoutMs: 5, weights: { app: 1 } },
      { name: 'e', match: { pathPrefix: '/x/../y', path: undefined, methods: ['get'] }, rateLimit: { requestsPerSecond: 0, key: 'header:X' } },
      { name: 'f', retry: { backoff: { baseMs: 1000 } }, bogus: 1 },
    ],
  })
  const expect = [
    /^routes\[0\]\.name: "default" names the top-level settings/,
    /^routes\[1\]\.match: at most one of pathPrefix, path and pathRegex/,
    /^routes\[2\]\.match\.pathRegex: a quantified group holds a quantifier/,
    /^routes\[3\]\.match\.headers\.X-Upper: /,
    /^routes\[3\]\.match\.headers\.x-ok\.regex: a quantified group holds an alternation/,
    /^routes\[6\]\.match\.pathPrefix: must be a plain normalised path/,
    /^routes\[6\]\.match\.methods\[0\]: must be an upper-case method/,
    /^routes\[6\]\.rateLimit\.requestsPerSecond: /,
    /^routes\[6\]\.rateLimit\.key: must be route, client or header:NAME/,
    /^routes\[7\]: unknown key|^routes\[7\]\.bogus: unknown key/,
  ]
  for (const re of expect) t.ok(found.some((p) => re.test(p)), `${re} in ${JSON.stringify(found)}`)
})

t.test('cross-checks once the whole config parsed: names, weights, direct, merged backoff', async (t) => {
  const found = problems({
    backends,
    routes: [
      { name: 'b' },
      { name: 'b' },
      { name: 'c', weights: { app: 0, nope: 5 } },
      { name: 'z', weights: { app: 0, canary: 0 } },
      { name: 'd', direct: { status: 404 }, retry: { attempts: 1 }, timeoutMs: 5, weights: { app: 1 } },
      { name: 'f', retry: { backoff: { baseMs: 1000 } } },
    ],
  })
  t.same(found.sort(), [
    'routes[1].name: duplicate route name "b"',
    'routes[2].weights.nope: names no backend ("nope")',
    'routes[3].weights: at least one backend needs a weight above 0',
    'routes[4].retry: has no meaning with direct (the proxy answers itself)',
    'routes[4].timeoutMs: has no meaning with direct (the proxy answers itself)',
    'routes[4].weights: has no meaning with direct (the proxy answers itself)',
    "routes[5].retry.backoff.baseMs: must not exceed the route's backoff.maxMs (250)",
  ].sort())
})

t.test("a route's retry is merged over the top level's, one level deep for backoff and budget", async (t) => {
  const top = validateConfig({ retry: { attempts: 3, backoff: { baseMs: 10, maxMs: 100 }, budget: { ratio: 0.5 } } }).retry
  t.equal(routeRetry(top, undefined), top, 'no retry of its own: the top level as it is')
  const merged = routeRetry(top, { attempts: 1, backoff: { maxMs: 500 }, budget: { minPerSecond: 0 } })
  t.same(merged, {
    ...top,
    attempts: 1,
    backoff: { baseMs: 10, maxMs: 500 },
    budget: { ratio: 0.5, minPerSecond: 0, windowMs: 10_000 },
  })
  t.same(routeRetry(top, { methods: ['GET'] }).retryOn, top.retryOn, 'lists left out come from the top level')
  t.same(routeRetry(top, { retryOn: [] }).retryOn, [], 'a list given replaces the top level\'s whole')
})
