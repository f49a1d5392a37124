// Local rate limiting, per route: a token bucket per key (the route as a whole, the client, or a
// header's value). "The client" is who the listener trusts it to be (ctx.clientKey: a verified
// certificate's identity, the client a trusted proxy named, else the peer's address). A bucket
// holds up to `burst` tokens and gains `requestsPerSecond` a second; a request takes one, and
// finds none: 429 rate_limited, with Retry-After the whole seconds until the next token. Local
// means per proxy: N replicas allow N times the rate.
//
// Keys are remembered in a table of at most `maxKeys` (least recently used forgotten first), so
// that a client inventing header values or addresses costs bounded memory; a forgotten key
// comes back with a full bucket. A request without the keyed header is keyed by its client
// (`client:<key>`), so leaving the header out gives no bucket of one's own to share with no
// one. Time is the injected Clock's.
import type { Clock } from '../clock.js'
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Layer, ProxyRequest, RequestContext } from '../pipeline/types.js'

export interface RateLimitOptions {
  requestsPerSecond: number
  burst: number
  /** "route", "client" or "header:NAME". */
  key: string
  maxKeys: number
}

/** Token buckets by key, least recently used forgotten past `maxKeys`. */
export class TokenBuckets {
  /** key -> { tokens, at }; a Map iterates in insertion order: re-inserting on use keeps the
   *  least recently used first. */
  private readonly buckets = new Map<string, { tokens: number; at: number }>()

  constructor(
    private readonly opts: { requestsPerSecond: number; burst: number; maxKeys: number },
    private readonly clock: Clock,
  ) {}

  get size(): number {
    return this.buckets.size
  }

  /** Takes a token for `key`: 0 when there was one, else the milliseconds until there is. */
  take(key: string): number {
    const now = this.clock.now()
    const { burst, requestsPerSecond } = this.opts
    const bucket = this.buckets.get(key)
    let tokens = burst
    if (bucket) {
      tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) * requestsPerSecond) / 1000)
      this.buckets.delete(key)
    } else if (this.buckets.size >= this.opts.maxKeys) {
      this.buckets.delete(this.buckets.keys().next().value!)
    }
    const allowed = tokens >= 1
    if (allowed) tokens -= 1
    this.buckets.set(key, { tokens, at: now })
    return allowed ? 0 : Math.ceil(((1 - tokens) * 1000) / requestsPerSecond)
  }
}

/** The buckets of every route, kept across config reloads: a route whose rateLimit did not
 *  change keeps its buckets (a reload must not hand every client a fresh burst). */
export class RateLimitTables {
  private tables = new Map<string, TokenBuckets>()
  private building: Map<string, TokenBuckets> | null = null

  constructor(private readonly clock: Clock) {}

  /** Starts a new generation: tables not asked for again until `commit` are dropped. */
  begin(): void {
    this.building = new Map()
  }

  /** The buckets of route `name` with these settings, the same ones as before when unchanged. */
  get(name: string, opts: RateLimitOptions): TokenBuckets {
    const key = `${name} ${opts.requestsPerSecond} ${opts.burst} ${opts.key} ${opts.maxKeys}`
    const buckets = this.tables.get(key) ?? new TokenBuckets(opts, this.clock)
    this.building?.set(key, buckets)
    return buckets
  }

  commit(): void {
    if (this.building) this.tables = this.building
    this.building = null
  }
}

export function createRateLimitLayer(opts: RateLimitOptions, deps: { metrics: Metrics; clock: Clock; buckets?: TokenBuckets }): Layer {
  const buckets = deps.buckets ?? new TokenBuckets(opts, deps.clock)
  const keyOf = keyFunction(opts.key)
  return (next) => (req, ctx, reply) => {
    const waitMs = buckets.take(keyOf(req, ctx))
    if (waitMs === 0) return next(req, ctx, reply)
    deps.metrics.countRejection('rate_limited')
    reply.fail(
      new SidecarError('rate_limited', { detail: `${opts.requestsPerSecond}/s, burst ${opts.burst}, per ${opts.key}`, retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)) }),
    )
  }
}

function keyFunction(key: string): (req: ProxyRequest, ctx: RequestContext) => string {
  if (key === 'route') return () => ''
  if (key === 'client') return (_req, ctx) => ctx.clientKey
  const header = key.slice('header:'.length)
  return (req, ctx) => {
    const value = req.headers[header]
    if (value === undefined) return `client:${ctx.clientKey}`
    return `header:${Array.isArray(value) ? value.join(',') : value}`
  }
}
