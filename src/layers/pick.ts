// Backend pick, once per attempt (so a retry may land on the other backend). In order:
//   1. the override header (`x-canary: always` -> the canary, `never` -> the stable backend),
//      whatever the weights and the backend's health: it is how a canary is tried by hand;
//   2. the sticky cookie, when configured, naming a backend that still has a weight and whose
//      breaker is not open;
//   3. a weighted random choice, made per request (not per connection, so one long-lived
//      keep-alive connection is still split). Weight 0 is never picked; a single non-zero weight
//      takes all traffic.
// The weighted choice skips backends whose breaker is open or that fail their health checks.
// When that leaves none, it falls back in steps, like Envoy's panic mode: first to the backends
// that are only unhealthy (a health check can be wrong, and refusing everything would turn a bad
// check into an outage), then to all of them (every breaker open: the breaker answers 503).
// With a sticky cookie, a response from a backend the client was not yet stuck to sets it.
import type { HeaderMap, Layer, ProxyResponse, Reply } from '../pipeline/types.js'

export interface WeightedBackend {
  name: string
  weight: number
}

export interface RoutingOptions {
  /** The override header's name, or false for none. */
  header: string | false
  /** The backend `always` means; default: the second backend; false: none (`always` then
   *  leaves the choice to the weights). */
  canary?: string | false | undefined
  sticky?: { cookie: string; maxAgeSeconds: number } | undefined
}

export interface PickDeps {
  random?: () => number
  /** False while the backend's breaker is open (or the backend is gone after a reload). */
  isAvailable?: (backend: string) => boolean
  /** The health checker's verdict. */
  isHealthy?: (backend: string) => boolean
}

export function createPickLayer(backends: readonly WeightedBackend[], routing: RoutingOptions, deps: PickDeps = {}): Layer {
  const random = deps.random ?? Math.random
  const isAvailable = deps.isAvailable ?? (() => true)
  const isHealthy = deps.isHealthy ?? (() => true)
  const live = backends.filter((b) => b.weight > 0)
  const stable = backends[0]!.name
  const canary = routing.canary === false ? undefined : (routing.canary ?? backends[1]?.name)
  const override = (value: string | string[] | undefined): string | undefined => {
    if (value === 'always') return canary
    if (value === 'never') return stable
    return undefined // absent, repeated or unknown: the weights decide
  }

  const weighted = (among: readonly WeightedBackend[]): string => {
    if (among.length === 1) return among[0]!.name
    let r = random() * among.reduce((sum, b) => sum + b.weight, 0)
    for (const b of among) {
      if (r < b.weight) return b.name
      r -= b.weight
    }
    return among[among.length - 1]!.name // r == total only through float rounding
  }
  const usable = (b: WeightedBackend) => isAvailable(b.name) && isHealthy(b.name)
  const pick = (): string => {
    if (live.every(usable)) return weighted(live) // the common case, without allocating
    const healthy = live.filter(usable)
    if (healthy.length > 0) return weighted(healthy)
    const available = live.filter((b) => isAvailable(b.name))
    return weighted(available.length > 0 ? available : live)
  }

  const sticky = routing.sticky
  const stuckTo = (headers: Readonly<HeaderMap>): string | undefined => {
    const name = sticky && readCookie(headers.cookie, sticky.cookie)
    return name !== undefined && live.some((b) => b.name === name) && isAvailable(name) ? name : undefined
  }

  return (next) => (req, ctx, reply) => {
    const forced = routing.header === false ? undefined : override(req.headers[routing.header])
    const stuck = forced ?? stuckTo(req.headers)
    const backend = forced ?? stuck ?? pick()
    ctx.backend = backend
    if (!sticky || forced !== undefined || stuck === backend) return next(req, ctx, reply)
    // the response sticks the client to the backend that answered it
    next(req, ctx, new SetCookie(`${sticky.cookie}=${backend}; Path=/; Max-Age=${sticky.maxAgeSeconds}; HttpOnly; SameSite=Lax`, reply))
  }
}

/** The sticky cookie added to the answer, beside any the app sets. */
class SetCookie implements Reply {
  constructor(
    private readonly cookie: string,
    private readonly up: Reply,
  ) {}

  ok(response: ProxyResponse): void {
    const set = response.headers['set-cookie']
    response.headers['set-cookie'] = set === undefined ? this.cookie : [...(Array.isArray(set) ? set : [set]), this.cookie]
    this.up.ok(response)
  }

  fail(err: unknown): void {
    this.up.fail(err)
  }
}

/** The value of cookie `name` in a Cookie header (HTTP/2 may send several), if present. */
function readCookie(header: string | string[] | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  for (const line of Array.isArray(header) ? header : [header]) {
    for (const pair of line.split(';')) {
      const eq = pair.indexOf('=')
      if (eq > 0 && pair.slice(0, eq).trim() === name) return pair.slice(eq + 1).trim()
    }
  }
  return undefined
}
