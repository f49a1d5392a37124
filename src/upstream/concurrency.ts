// How many requests a backend is given at once, found from its latency (Envoy's adaptive
// concurrency filter, gradient controller; Netflix's concurrency-limits). The app's latency
// when it is not loaded (the minimum, minRtt) is measured with the limit pinned low; then, every
// sample window, the window's latency (a percentile, sampleRtt) is compared with it:
//
//   gradient = clamp((minRtt * (1 + tolerance)) / sampleRtt, 0.5, 2)
//   limit    = clamp(limit * gradient + sqrt(limit * gradient), min, max)
//
// Flat latency lets the limit grow (by its square root, the headroom for bursts); latency past
// the tolerance shrinks it, at most by half per window. A limit that was not half used in a
// window does not grow (an idle app proves nothing about its capacity). The minimum is measured
// again every minRttIntervalMs (with jitter, so that the pods of a Service do not all pin their
// limits at once), the limit pinned to `min` meanwhile and given back afterwards: an app whose
// unloaded latency has changed (a deploy, a slower dependency) is followed, and a limit can
// never settle on a latency that was itself the product of queueing.
//
// A state machine on the clock: samples in (latency, requests in flight), the limit out, told to
// `onChange`. The overload layer (layers/overload.ts) holds requests past the limit.
import type { Clock } from '../clock.js'

export interface AdaptiveConcurrencyOptions {
  /** Never fewer at once (and the limit while the minimum latency is measured). */
  min: number
  /** Never more at once. */
  max: number
  /** How often the limit is recomputed from the latencies of the last window. */
  sampleWindowMs: number
  /** Which latency of a window stands for it (0.5: the median, as Envoy's default). */
  percentile: number
  /** How far above the minimum latency is still "not loaded": 0.25 lets latency rise 25%. */
  tolerance: number
  /** How often the minimum latency is measured again. */
  minRttIntervalMs: number
  /** How many requests that measurement takes. */
  minRttRequests: number
  /** +- this share of minRttIntervalMs, at random. */
  jitter: number
}

export interface ConcurrencyState {
  limit: number
  /** measuring: the limit pinned to `min` while the minimum latency is measured. */
  phase: 'measuring' | 'adapting'
  /** The app's unloaded latency, once measured (ms). */
  minRttMs: number | undefined
  /** The last window's latency (ms). */
  sampleRttMs: number | undefined
}

/** Samples kept per window at most: enough for a percentile, bounded whatever the rate. */
const MAX_SAMPLES = 1000

export class AdaptiveLimit {
  private current: number
  private phase: ConcurrencyState['phase'] = 'measuring'
  private minRtt: number | undefined
  private sampleRtt: number | undefined
  /** The limit in force before a measurement pinned it, given back after. */
  private deferred: number
  private samples: number[] = []
  /** Most requests in flight seen in the window (a limit not half used does not grow). */
  private peak = 0
  private windowEnds: (() => void) | undefined
  private nextMeasure: (() => void) | undefined
  private stopped = false

  /** `random`: [0, 1), for the jitter. `onChange`: told each new limit and the one before. */
  constructor(
    private opts: AdaptiveConcurrencyOptions,
    private readonly deps: { clock: Clock; random: () => number; onChange: (limit: number, previous: number) => void },
  ) {
    this.current = opts.min
    this.deferred = opts.min
  }

  get limit(): number {
    return this.current
  }

  state(): ConcurrencyState {
    return { limit: this.current, phase: this.phase, minRttMs: this.minRtt, sampleRttMs: this.sampleRtt }
  }

  /** One request's latency (to its response headers, in ms), with the requests in flight then. */
  sample(latencyMs: number, inFlight: number): void {
    if (this.stopped) return
    if (this.samples.length < MAX_SAMPLES) this.samples.push(latencyMs)
    if (inFlight > this.peak) this.peak = inFlight
    if (this.phase === 'measuring') {
      if (this.samples.length >= this.opts.minRttRequests) this.measured()
      return
    }
    this.windowEnds ??= this.deps.clock.timeout(this.opts.sampleWindowMs, () => this.adapt())
  }

  /** The settings changed (a reload): kept, with the limit, the minimum and the phase. */
  configure(opts: AdaptiveConcurrencyOptions): void {
    this.opts = opts
    this.set(Math.min(opts.max, Math.max(opts.min, this.current)))
  }

  stop(): void {
    this.stopped = true
    this.windowEnds?.()
    this.nextMeasure?.()
  }

  /** The minimum is measured: the limit given back, the next measurement scheduled. */
  private measured(): void {
    this.minRtt = percentile(this.samples, this.opts.percentile)
    this.samples = []
    this.peak = 0
    this.phase = 'adapting'
    this.set(this.deferred)
    const { minRttIntervalMs: interval, jitter } = this.opts
    const delay = interval * (1 + jitter * (2 * this.deps.random() - 1))
    this.nextMeasure = this.deps.clock.timeout(delay, () => this.measure())
  }

  /** The limit pinned to `min` until minRttRequests samples give the minimum again. */
  private measure(): void {
    this.windowEnds?.()
    this.windowEnds = undefined
    this.deferred = this.current
    this.samples = []
    this.phase = 'measuring'
    this.set(this.opts.min)
  }

  /** A window is over: the limit follows the gradient of its latency against the minimum. */
  private adapt(): void {
    this.windowEnds = undefined
    const samples = this.samples
    const peak = this.peak
    this.samples = []
    this.peak = 0
    if (samples.length === 0 || this.minRtt === undefined) return
    const { min, max, tolerance } = this.opts
    this.sampleRtt = percentile(samples, this.opts.percentile)
    const gradient = Math.min(2, Math.max(0.5, (this.minRtt * (1 + tolerance)) / Math.max(this.sampleRtt, 1e-3)))
    const scaled = this.current * gradient
    let next = Math.min(max, Math.max(min, Math.round(scaled + Math.sqrt(scaled))))
    if (next > this.current && peak < this.current / 2) next = this.current
    this.set(next)
  }

  private set(limit: number): void {
    const previous = this.current
    if (limit === previous) return
    this.current = limit
    this.deps.onChange(limit, previous)
  }
}

/** The `p` percentile (0..1) of `values` (nearest rank; sorts them). */
export function percentile(values: number[], p: number): number {
  values.sort((a, b) => a - b)
  return values[Math.min(values.length - 1, Math.max(0, Math.ceil(p * values.length) - 1))]!
}
