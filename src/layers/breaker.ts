// Circuit breaker: one opossum breaker per backend, counting attempts (this layer sits below
// retry and the backend pick). Connection errors, timeouts and 5xx responses are failures;
// 4xx responses and client aborts are not. Open: the backend gets nothing, the attempt fails at
// once with 503 circuit_open and a Retry-After, and the pick prefers backends whose breaker is
// not open. After resetTimeoutMs one probe passes (half-open); its result closes or reopens.
// A backend that passes its health checks again after failing them closes its breaker at once.
// opossum's own timeout is off: each attempt's deadline is the retry layer's (per attempt, so
// one slow call never aborts the others). The only module that imports opossum.
import CircuitBreaker from 'opossum'
import { SidecarError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Layer, ProxyResponse } from '../pipeline/types.js'

export interface BreakerOptions {
  errorThresholdPercentage: number
  volumeThreshold: number
  rollingWindowMs: number
  resetTimeoutMs: number
}

export type BreakerState = 'closed' | 'half-open' | 'open'

const STATE_VALUE: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 }

/** A 5xx travels through opossum as a rejection (so it counts), then back out as the response. */
class FailedResponse extends Error {
  readonly code = 'FAILED_RESPONSE'
  constructor(readonly response: ProxyResponse) {
    super(`upstream answered ${response.status}`)
  }
}

type Attempt = () => Promise<ProxyResponse>

export class Breakers {
  private readonly breakers = new Map<string, CircuitBreaker<[Attempt], ProxyResponse>>()
  private readonly openedAt = new Map<string, number>()
  private opts!: BreakerOptions

  constructor(
    backends: readonly string[],
    opts: BreakerOptions,
    private readonly deps: { metrics: Metrics; logger: Logger },
  ) {
    this.sync(backends, opts)
  }

  /**
   * Makes the breakers match a reloaded config: a new backend gets a closed breaker, a removed
   * one's breaker is stopped, and new options replace every breaker (closed, counts reset).
   * An unchanged backend keeps its breaker, state and counts included.
   */
  sync(backends: readonly string[], opts: BreakerOptions): void {
    const changed = this.opts !== undefined && JSON.stringify(opts) !== JSON.stringify(this.opts)
    this.opts = opts
    for (const [name, breaker] of this.breakers) {
      if (changed || !backends.includes(name)) {
        breaker.shutdown()
        this.breakers.delete(name)
        if (!backends.includes(name)) this.deps.metrics.circuitState.remove(name)
      }
    }
    for (const name of backends) if (!this.breakers.has(name)) this.breakers.set(name, this.create(name))
  }

  private create(name: string): CircuitBreaker<[Attempt], ProxyResponse> {
    const { opts, deps } = this
    const breaker = new CircuitBreaker<[Attempt], ProxyResponse>(
      async (attempt) => {
        const response = await attempt()
        if (response.status >= 500) throw new FailedResponse(response)
        return response
      },
      {
        timeout: false,
        errorThresholdPercentage: opts.errorThresholdPercentage,
        volumeThreshold: opts.volumeThreshold,
        rollingCountTimeout: opts.rollingWindowMs,
        rollingCountBuckets: 10,
        resetTimeout: opts.resetTimeoutMs,
        // Off: with percentiles on, opossum keeps every call's latency in the window and, on
        // every failure, concatenates and sorts them all to decide whether to open (about 1 ms
        // per failed attempt with 20,000 calls in the window): a proxy whose app fails 40% of
        // its requests would burn its CPU on that sort. Snapshots do the same sort every bucket.
        rollingPercentilesEnabled: false,
        enableSnapshots: false,
        // Not the upstream's fault: the client left, or the request broke a limit.
        errorFilter: (err: { code?: unknown }) => err.code !== 'FAILED_RESPONSE' && !String(err.code).startsWith('upstream_'),
      },
    )
    const transition = (state: BreakerState) => () => {
      deps.metrics.circuitState.labels(name).set(STATE_VALUE[state])
      if (state === 'open') this.openedAt.set(name, Date.now())
      const stats = breaker.stats
      deps.logger[state === 'open' ? 'warn' : 'info'](
        { backend: name, state, failures: stats.failures, fires: stats.fires },
        `circuit breaker ${state}`,
      )
    }
    breaker.on('open', transition('open'))
    breaker.on('halfOpen', transition('half-open'))
    breaker.on('close', transition('closed'))
    deps.metrics.circuitState.labels(name).set(0)
    return breaker
  }

  state(backend: string): BreakerState {
    const b = this.breakers.get(backend)
    return !b || b.closed ? 'closed' : b.halfOpen ? 'half-open' : 'open'
  }

  /** The backend passes its health checks again after failing them: an open breaker closes. */
  recovered(backend: string): void {
    const breaker = this.breakers.get(backend)
    if (!breaker || breaker.closed) return
    this.deps.logger.info({ backend }, 'circuit breaker closing: the backend passes its health checks again')
    breaker.close()
  }

  /** False while the backend's breaker is open (half-open lets its probe through). */
  isAvailable = (backend: string): boolean => this.state(backend) !== 'open'

  async run(backend: string, attempt: Attempt): Promise<ProxyResponse> {
    const breaker = this.breakers.get(backend)
    if (!breaker) return attempt()
    try {
      return await breaker.fire(attempt)
    } catch (err) {
      const e = err as { code?: unknown; response?: ProxyResponse }
      if (e.code === 'FAILED_RESPONSE') return e.response!
      if (e.code === 'EOPENBREAKER') {
        const resting = this.opts.resetTimeoutMs - (Date.now() - (this.openedAt.get(backend) ?? Date.now()))
        throw new SidecarError('circuit_open', { detail: `backend ${backend}`, retryAfterSeconds: Math.max(1, resting / 1000) })
      }
      throw err
    }
  }

  /** Stops every breaker's timers. */
  shutdown(): void {
    for (const b of this.breakers.values()) b.shutdown()
  }
}

export function createBreakerLayer(breakers: Breakers): Layer {
  return (next) => (req, ctx) => breakers.run(ctx.backend!, () => next(req, ctx))
}
