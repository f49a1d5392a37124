// Load shedding by event-loop delay (Envoy's overload manager, on the one resource a Node proxy
// runs out of first): once a second, the loop's 99th-percentile delay over that second is read;
// above limits.maxEventLoopDelayMs, new requests are refused at once and cheaply (503, or
// REFUSED_STREAM on HTTP/2) until it is back under, so that what was accepted finishes and new
// connections still get their handshakes.
import { monitorEventLoopDelay } from 'node:perf_hooks'
import type { Clock } from '../clock.js'

export class LoadShedder {
  private sheddingNow = false
  private stop: () => void = () => {}

  /** `sample`: the delay (ms) to judge by, read once a second; the real loop's unless a test gives one. */
  constructor(
    private readonly maxDelayMs: number,
    private readonly clock: Clock,
    private readonly sample?: () => number,
  ) {}

  get shedding(): boolean {
    return this.sheddingNow
  }

  start(): void {
    if (this.maxDelayMs === 0) return
    const sample = this.sample ?? loopDelay()
    const tick = () => {
      this.sheddingNow = sample() > this.maxDelayMs
      this.stop = this.clock.timeout(1000, tick)
    }
    this.stop = this.clock.timeout(1000, tick)
  }

  close(): void {
    this.stop()
  }
}

/** The loop's 99th-percentile delay in ms since the last call. */
function loopDelay(): () => number {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  return () => {
    const p99 = histogram.percentile(99) / 1e6
    histogram.reset()
    return p99
  }
}
