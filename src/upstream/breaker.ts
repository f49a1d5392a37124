// One backend's circuit breaker, counting attempts (the breaker layer sits below retry and the
// backend pick). 5xx answers and the failures the catalogue marks `breaker` (connection errors,
// timeouts, bad answers: the upstream's fault) count; 4xx answers, client aborts and the proxy's
// own refusals do not. Open: the backend gets nothing and the attempt fails at once with 503
// circuit_open and a Retry-After (the pick prefers backends whose breaker is not open). After
// resetTimeoutMs one probe passes (half-open); its result closes or reopens the breaker. A
// backend that passes its health checks again closes its breaker at once.
//
// The counting is this file's own: a rolling window of BUCKETS buckets, each with its attempts
// and failures, turned over on the injected Clock like every other timer of the proxy; the
// breaker opens when the window holds at least volumeThreshold attempts and more than
// errorThresholdPercentage of them failed (opossum's rule, which the proxy used before: opossum
// cost 5.7 us of a request's 49, more than any other part, in promises and events per call, and
// the proxy had turned off or replaced most of it: its timeout, latency percentiles, snapshots,
// window rotation and reset timer). Each attempt's deadline is the retry layer's.
import type { Clock } from '../clock.js'
import { ERRORS, SidecarError, isErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { pass } from '../pipeline/compose.js'
import type { Handler, ProxyRequest, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'

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

/** Buckets of the rolling window. */
const BUCKETS = 10

/** Whether an attempt's error counts against the backend: what the catalogue says. */
function countsAsFailure(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return isErrorCode(code) && ERRORS[code].breaker
}

/** Attempts and failures over the last rollingWindowMs, in buckets. */
class Window {
  private readonly attempts = new Array<number>(BUCKETS).fill(0)
  private readonly failed = new Array<number>(BUCKETS).fill(0)
  private at = 0
  /** Totals over every bucket. */
  fires = 0
  failures = 0

  count(failure: boolean): void {
    this.attempts[this.at]!++
    this.fires++
    if (failure) {
      this.failed[this.at]!++
      this.failures++
    }
  }

  /** The oldest bucket leaves the window and becomes the newest, empty. */
  rotate(): void {
    this.at = (this.at + 1) % BUCKETS
    this.fires -= this.attempts[this.at]!
    this.failures -= this.failed[this.at]!
    this.attempts[this.at] = this.failed[this.at] = 0
  }

  reset(): void {
    this.attempts.fill(0)
    this.failed.fill(0)
    this.fires = this.failures = 0
  }
}

export class Breaker {
  private current: BreakerState = 'closed'
  private readonly window = new Window()
  /** Half-open: the one probe is out. */
  private probing = false
  private stopRotation: () => void
  private stopRest: (() => void) | undefined
  private openedAt = 0
  private stopped = false

  constructor(
    readonly backend: string,
    readonly opts: BreakerOptions,
    private readonly deps: BreakerDeps,
  ) {
    const bucketMs = opts.rollingWindowMs / BUCKETS
    const rotate = () => {
      this.window.rotate()
      this.stopRotation = deps.clock.timeout(bucketMs, rotate)
    }
    this.stopRotation = deps.clock.timeout(bucketMs, rotate)
    deps.metrics.setCircuitState(backend, 'closed')
  }

  get state(): BreakerState {
    return this.current
  }

  /** Runs one attempt (`next`) through the breaker: its outcome is counted on its way up to
   *  `reply` (a 5xx is answered and counted, never turned into a failure). */
  run(next: Handler, req: ProxyRequest, ctx: RequestContext, reply: Reply): void {
    if (this.stopped) return next(req, ctx, reply)
    if (this.current === 'closed') return pass(next, req, ctx, new Counted(this, false, reply))
    if (this.current === 'open' || this.probing) return reply.fail(this.refusal())
    this.probing = true // half-open: this attempt is the probe
    pass(next, req, ctx, new Counted(this, true, reply))
  }

  /** An attempt's outcome (Counted): the probe's decides the half-open breaker. */
  record(probe: boolean, failure: boolean): void {
    if (probe) this.probed(failure)
    else this.counted(failure)
  }

  /** The backend passes its health checks again after failing them: an open breaker closes. */
  recovered(): void {
    if (this.current === 'closed') return
    this.deps.logger.info({ backend: this.backend }, 'circuit breaker closing: the backend passes its health checks again')
    this.close()
  }

  /** Stops its timers; it refuses nothing afterwards but counts nothing either. */
  shutdown(): void {
    this.stopped = true
    this.stopRotation()
    this.stopRest?.()
  }

  // Outcomes, made once per breaker (no closure per attempt). A 4xx, a client abort or the
  // proxy's own refusal counts as an attempt that did not fail.
  private counted(failure: boolean): void {
    if (this.stopped) return
    this.window.count(failure)
    // counted while closed only: an attempt sent before the breaker opened may end after it
    if (!failure || this.current !== 'closed') return
    const { fires, failures } = this.window
    if (fires >= this.opts.volumeThreshold && (failures / fires) * 100 > this.opts.errorThresholdPercentage) this.open()
  }

  private probed(failure: boolean): void {
    this.probing = false
    if (this.stopped || this.current !== 'half-open') return
    if (failure) this.open()
    else this.close()
  }

  private refusal(): SidecarError {
    const resting = this.opts.resetTimeoutMs - (this.deps.clock.now() - this.openedAt)
    return new SidecarError('circuit_open', { detail: `backend ${this.backend}`, retryAfterSeconds: Math.max(1, resting / 1000) })
  }

  private open(): void {
    this.transition('open') // logged with the window's counts that opened it
    this.openedAt = this.deps.clock.now()
    this.stopRest?.()
    // Rested: a half-open breaker lets one probe through.
    this.stopRest = this.deps.clock.timeout(this.opts.resetTimeoutMs, () => this.transition('half-open'))
  }

  /** Closed with an empty window: what failed before is not held against the backend again. */
  private close(): void {
    this.stopRest?.()
    this.stopRest = undefined
    this.probing = false
    this.transition('closed')
    this.window.reset()
  }

  private transition(state: BreakerState): void {
    this.deps.metrics.circuitTransition(this.backend, this.current, state)
    this.current = state
    const { failures, fires } = this.window
    this.deps.logger[state === 'open' ? 'warn' : 'info']({ backend: this.backend, state, failures, fires }, `circuit breaker ${state}`)
  }
}

/** One attempt through a breaker: its outcome is counted, then passed up unchanged. */
class Counted implements Reply {
  constructor(
    private readonly breaker: Breaker,
    private readonly probe: boolean,
    private readonly up: Reply,
  ) {}

  ok(response: ProxyResponse): void {
    this.breaker.record(this.probe, response.status >= 500)
    this.up.ok(response)
  }

  fail(err: unknown): void {
    this.breaker.record(this.probe, countsAsFailure(err))
    this.up.fail(err)
  }
}
