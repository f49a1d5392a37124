// Route match: the first route whose match fits the request names it on the context
// (`ctx.route`; "default" when none does), and the stack hands the request to that route's own
// layers. Once per request, at the top, before any policy.
//
// Paths are matched after normalisation, never forwarded normalised: the query is left out,
// percent-escapes of unreserved characters (A-Z a-z 0-9 - . _ ~) are decoded, repeated slashes
// merged and `.`/`..` segments resolved, so that `/%69nternal/x`, `//internal/x` and
// `/a/../internal/x` all match a `/internal/` route as the app would read them. Other escapes
// (`%2F`) stay as they are: the app does not take them for separators either.
import type { Layer, ProxyRequest } from '../pipeline/types.js'

/** The route of a request no route matches: the top-level settings. */
export const DEFAULT_ROUTE = 'default'

export interface RouteMatch {
  pathPrefix?: string | undefined
  path?: string | undefined
  pathRegex?: string | undefined
  methods?: readonly string[] | undefined
  headers?: Readonly<Record<string, string | { regex: string }>> | undefined
}

export interface MatchableRoute {
  name: string
  match: RouteMatch
}

type Test = (req: ProxyRequest, path: string) => boolean

/** The route table as one function: the name of the first route that fits, or "default".
 *  Regexes are compiled here, once per config. */
export function compileRoutes(routes: readonly MatchableRoute[]): (req: ProxyRequest) => string {
  const compiled = routes.map((r) => ({ name: r.name, test: compileMatch(r.match) }))
  return (req) => {
    if (compiled.length === 0) return DEFAULT_ROUTE
    const path = normalizePath(req.path)
    for (const route of compiled) if (route.test(req, path)) return route.name
    return DEFAULT_ROUTE
  }
}

function compileMatch(m: RouteMatch): Test {
  const tests: Test[] = []
  const { pathPrefix, path: exact, pathRegex, methods, headers } = m
  if (pathPrefix !== undefined) tests.push((_req, path) => path.startsWith(pathPrefix))
  if (exact !== undefined) tests.push((_req, path) => path === exact)
  if (pathRegex !== undefined) {
    const re = new RegExp(pathRegex)
    tests.push((_req, path) => re.test(path))
  }
  if (methods !== undefined) {
    const set = new Set(methods)
    tests.push((req) => set.has(req.method))
  }
  for (const [name, want] of Object.entries(headers ?? {})) {
    const fits = typeof want === 'string' ? (v: string) => v === want : ((re) => (v: string) => re.test(v))(new RegExp(want.regex))
    tests.push((req) => {
      const value = req.headers[name]
      return value === undefined ? false : Array.isArray(value) ? value.some(fits) : fits(value)
    })
  }
  return (req, path) => tests.every((test) => test(req, path))
}

const UNRESERVED = /[A-Za-z0-9\-._~]/

/** The path as routes see it (see the top of this file). */
export function normalizePath(target: string): string {
  let end = target.indexOf('?')
  if (end === -1) end = target.length
  const hash = target.indexOf('#')
  if (hash !== -1 && hash < end) end = hash
  let path = target.slice(0, end)
  // the common case: nothing to decode, merge or resolve
  if (!path.includes('%') && !path.includes('//') && !path.includes('/.')) return path
  path = path.replace(/%([0-9A-Fa-f]{2})/g, (escape, hex: string) => {
    const c = String.fromCharCode(parseInt(hex, 16))
    return UNRESERVED.test(c) ? c : escape.toUpperCase()
  })
  const out: string[] = []
  const segments = path.split('/')
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i]!
    const last = i === segments.length - 1
    if (s === '..') {
      out.pop()
      if (last) out.push('')
    } else if (s === '.') {
      if (last) out.push('')
    } else if (s === '' && !last) {
      // a repeated slash
    } else {
      out.push(s)
    }
  }
  return '/' + out.join('/')
}

/** Names the request's route on the context; the stack's dispatch goes on from there. */
export function createRouteMatchLayer(routes: readonly MatchableRoute[]): Layer {
  const routeOf = compileRoutes(routes)
  return (next) => (req, ctx, reply) => {
    ctx.route = routeOf(req)
    next(req, ctx, reply)
  }
}
