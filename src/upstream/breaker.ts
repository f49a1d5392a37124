// One backend's circuit breaker, counting attempts (the breaker layer sits below retry and the
// backend pick). 5xx answers and the failures the catalogue marks `breaker` (connection errors,
// timeouts, bad answers: the upstream's fault) count; 4xx answers, client aborts and the proxy's
// own refusals do not. Open: the backend gets nothing and the attempt fails at once with 503
// circuit_open and a Retry-After (the pick prefers backends whose breaker is not open). After
// resetTimeoutMs one probe passes (half-open); its result closes or reopens the breaker. A
// backend that passes its health checks again closes its breaker at once.
//
// opossum counts and decides when to open; time is the injected Clock's, like everywhere else:
// the rolling window turns over on the clock (opossum's `rotateBucketController`), and the
// resting period is timed on the clock too, after which the breaker is restored half-open
// (opossum's documented `state` option) with a fresh window. opossum's own timeout is off: each
// attempt's deadline is the retry layer's. The only module that imports opossum.
import { EventEmitter } from 'node:events'
import CircuitBreaker from 'opossum'
import type { Clock } from '../clock.js'
import { ERRORS, SidecarError, isErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { ProxyResponse } from '../pipeline/types.js'

export interface BreakerOptions {
  errorThresholdPercentage: number
  volumeThreshold: number
  rollingWindowMs: number
  resetTimeoutMs: number
}

export type BreakerState = 'closed' | 'half-open' | 'open'

export interface BreakerDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
}

type Attempt = () => Promise<ProxyResponse>
type Opossum = CircuitBreaker<[Attempt], ProxyResponse>

/** Buckets of the rolling window. */
const BUCKETS = 10
/** opossum's own reset timer runs on the real clock: set beyond reach (setTimeout's maximum). */
const NEVER_MS = 2 ** 31 - 1

/** A 5xx travels through opossum as a rejection (so it counts), then back out as the response. */
class FailedResponse extends Error {
  readonly code = 'FAILED_RESPONSE'
  constructor(readonly response: ProxyResponse) {
    super(`upstream answered ${response.status}`)
  }
}

/** A 5xx answer rejects, so that opossum counts it. */
function failIfServerError(response: ProxyResponse): ProxyResponse {
  if (response.status >= 500) throw new FailedResponse(response)
  return response
}

/** Whether an attempt's failure counts against the backend: a 5xx, or what the catalogue says. */
function countsAsFailure(err: { code?: unknown }): boolean {
  return err.code === 'FAILED_RESPONSE' || (isErrorCode(err.code) && ERRORS[err.code].breaker)
}

export class Breaker {
  private opossum: Opossum
  /** opossum's window moves one bucket on each 'rotate'. */
  private readonly rotation = new EventEmitter()
  private stopRotation: () => void
  private stopRest: (() => void) | undefined
  private openedAt = 0

  constructor(
    readonly backend: string,
    readonly opts: BreakerOptions,
    private readonly deps: BreakerDeps,
  ) {
    this.opossum = this.create(false)
    const bucketMs = opts.rollingWindowMs / BUCKETS
    const rotate = () => {
      this.rotation.emit('rotate')
      this.stopRotation = deps.clock.timeout(bucketMs, rotate)
    }
    this.stopRotation = deps.clock.timeout(bucketMs, rotate)
    deps.metrics.setCircuitState(backend, 'closed')
  }

  get state(): BreakerState {
    const o = this.opossum
    return o.closed ? 'closed' : o.halfOpen ? 'half-open' : 'open'
  }

  /** Runs one attempt through the breaker: a 5xx is returned (and counted), never thrown. */
  run(attempt: Attempt): Promise<ProxyResponse> {
    return this.opossum.fire(attempt).then(undefined, this.failed)
  }

  /** What opossum rejected with: a counted 5xx goes on as the answer; an open breaker is 503. */
  private readonly failed = (err: { code?: unknown; response?: ProxyResponse }): ProxyResponse => {
    if (err.code === 'FAILED_RESPONSE') return err.response!
    if (err.code === 'EOPENBREAKER') {
      const resting = this.opts.resetTimeoutMs - (this.deps.clock.now() - this.openedAt)
      throw new SidecarError('circuit_open', { detail: `backend ${this.backend}`, retryAfterSeconds: Math.max(1, resting / 1000) })
    }
    throw err
  }

  /** The backend passes its health checks again after failing them: an open breaker closes. */
  recovered(): void {
    if (this.opossum.closed) return
    this.deps.logger.info({ backend: this.backend }, 'circuit breaker closing: the backend passes its health checks again')
    this.stopRest?.()
    this.opossum.close()
  }

  /** Stops its timers; it refuses nothing afterwards but counts nothing either. */
  shutdown(): void {
    this.stopRotation()
    this.stopRest?.()
    this.opossum.shutdown()
  }

  private create(halfOpen: boolean): Opossum {
    const options: CircuitBreaker.Options & { state?: Partial<CircuitBreaker.State> } = {
      timeout: false,
      errorThresholdPercentage: this.opts.errorThresholdPercentage,
      volumeThreshold: this.opts.volumeThreshold,
      rollingCountTimeout: this.opts.rollingWindowMs,
      rollingCountBuckets: BUCKETS,
      rotateBucketController: this.rotation,
      resetTimeout: NEVER_MS,
      // Off: with percentiles on, opossum keeps every call's latency in the window and, on
      // every failure, concatenates and sorts them all to decide whether to open (about 1 ms
      // per failed attempt with 20,000 calls in the window): a proxy whose app fails 40% of
      // its requests would burn its CPU on that sort. Snapshots do the same sort every bucket.
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      errorFilter: (err: { code?: unknown }) => !countsAsFailure(err),
      ...(halfOpen && { state: { closed: false, halfOpen: true } }),
    }
    const breaker: Opossum = new CircuitBreaker((attempt: Attempt) => attempt().then(failIfServerError), options)
    breaker.on('open', () => {
      this.openedAt = this.deps.clock.now()
      this.stopRest = this.deps.clock.timeout(this.opts.resetTimeoutMs, () => this.halfOpen())
      this.transition('open')
    })
    breaker.on('close', () => this.transition('closed'))
    return breaker
  }

  /** Rested: a breaker restored half-open lets one probe through. */
  private halfOpen(): void {
    this.opossum.shutdown()
    this.opossum = this.create(true)
    this.transition('half-open')
  }

  private transition(state: BreakerState): void {
    this.deps.metrics.setCircuitState(this.backend, state)
    const stats = this.opossum.stats
    this.deps.logger[state === 'open' ? 'warn' : 'info'](
      { backend: this.backend, state, failures: stats.failures, fires: stats.fires },
      `circuit breaker ${state}`,
    )
  }
}
