// The route matcher, table-driven: order, prefixes and exact paths, regexes, methods, header
// values and regexes, the default route, and the normalisation that keeps a route from being
// walked around.
import t from 'tap'
import { compileRoutes, createRouteMatchLayer, normalizePath, type MatchableRoute } from '../../src/layers/route-match.js'
import { context, drive, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

const routes: MatchableRoute[] = [
  { name: 'internal', match: { pathPrefix: '/internal/' } },
  { name: 'login', match: { path: '/login', methods: ['POST'] } },
  { name: 'order', match: { pathRegex: '^/users/[0-9]+/orders$' } },
  { name: 'tenant-a', match: { pathPrefix: '/api/', headers: { 'x-tenant': 'a' } } },
  { name: 'keyed', match: { pathPrefix: '/api/', headers: { 'x-api-key': { regex: '^k[0-9]+$' } } } },
  { name: 'api', match: { pathPrefix: '/api' } },
  { name: 'gets', match: { methods: ['GET', 'HEAD'] } },
]

t.test('the first route that fits wins; none: default', async (t) => {
  const routeOf = compileRoutes(routes)
  const cases: Array<[string, string, Record<string, string | string[]>, string]> = [
    ['GET', '/internal/x', {}, 'internal'],
    ['POST', '/internal/', {}, 'internal'],
    ['POST', '/internal', {}, 'default'], // a prefix is a string prefix: /internal/ needs the slash
    ['POST', '/login', {}, 'login'],
    ['POST', '/login?next=/x', {}, 'login'], // the query is not part of the path
    ['POST', '/login/', {}, 'default'], // exact means exact
    ['GET', '/login', {}, 'gets'], // the method did not fit; the next route did
    ['POST', '/users/12/orders', {}, 'order'],
    ['POST', '/users/12/orders/1', {}, 'default'],
    ['POST', '/users/x/orders', {}, 'default'],
    ['POST', '/api/v1', { 'x-tenant': 'a' }, 'tenant-a'],
    ['POST', '/api/v1', { 'x-tenant': 'b' }, 'api'],
    ['POST', '/api/v1', { 'x-tenant': ['b', 'a'] }, 'tenant-a'], // one of the repeated values fits
    ['POST', '/api/v1', { 'x-api-key': 'k123' }, 'keyed'],
    ['POST', '/api/v1', { 'x-api-key': 'k12x' }, 'api'],
    ['POST', '/apix', {}, 'api'], // order matters: /api without a slash takes /apix too
    ['DELETE', '/other', {}, 'default'],
    ['HEAD', '/other', {}, 'gets'],
  ]
  for (const [method, path, headers, want] of cases) {
    t.equal(routeOf(proxyRequest({ method, path, headers })), want, `${method} ${path} ${JSON.stringify(headers)}`)
  }
})

t.test('no routes: everything is default', async (t) => {
  t.equal(compileRoutes([])(proxyRequest({ path: '/anything' })), 'default')
  t.equal(compileRoutes([{ name: 'all', match: {} }])(proxyRequest({ path: '/anything' })), 'all', 'an empty match takes every request')
})

t.test('normalisation: attempts to walk around a route for /internal/', async (t) => {
  const routeOf = compileRoutes([{ name: 'internal', match: { pathPrefix: '/internal/' } }])
  for (const path of [
    '/internal/x',
    '/%69nternal/x',
    '/%69%6E%74%65%72%6e%61%6c/x',
    '//internal/x',
    '///internal//x',
    '/a/../internal/x',
    '/a/b/../../internal/x',
    '/../internal/x',
    '/./internal/x',
    '/%2e%2e/internal/x',
    '/a/%2E%2E/internal/x',
    '/%2e/internal/x',
    '/internal/%2e%2e/internal/x',
  ]) {
    t.equal(routeOf(proxyRequest({ path })), 'internal', path)
  }
  for (const path of ['/internal', '/internal/../public', '/%2finternal/x', '/public/internal/x']) {
    t.equal(routeOf(proxyRequest({ path })), 'default', `${path}: not the route`)
  }
})

t.test('normalizePath', async (t) => {
  const cases: Array<[string, string]> = [
    ['/', '/'],
    ['/a/b', '/a/b'],
    ['/a/b?x=/../y', '/a/b'],
    ['/a/b#frag', '/a/b'],
    ['/a//b/', '/a/b/'],
    ['/a/./b/.', '/a/b/'],
    ['/a/b/..', '/a/'],
    ['/..', '/'],
    ['/../..', '/'],
    ['/%7Euser/%41', '/~user/A'],
    ['/a%2Fb', '/a%2Fb'],
    ['/a%2fb', '/a%2Fb'],
    ['/a%20b', '/a%20b'],
    ['/%zz', '/%zz'],
  ]
  for (const [input, want] of cases) t.equal(normalizePath(input), want, input)
})

t.test('the layer names the route on the context and forwards the request untouched', async (t) => {
  const next = scripted(response(200))
  const ctx = context()
  const req = proxyRequest({ path: '/a/../internal/x?q=1' })
  await drive(createRouteMatchLayer([{ name: 'internal', match: { pathPrefix: '/internal/' } }]))(next)(req, ctx)
  t.equal(ctx.route, 'internal')
  t.equal(next.calls[0]!.req, req, 'the same request: its path as the client sent it')
})
