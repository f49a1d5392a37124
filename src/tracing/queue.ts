// The export queue: finished spans wait here and go to the exporter in batches, one export at a
// time, never on a request's path. Bounded: past maxQueueSize a span is dropped and counted, so
// a collector that is slow, down or failing costs spans (counted in
// sidecar_spans_dropped_total), never a request's time or the proxy's memory. A drain flushes
// what is queued, within the time it has left. (OpenTelemetry's BatchSpanProcessor does the
// same, but it counts its drops only in a log line.)
import type { Clock } from '../clock.js'
import type { SpanRecord, SpanSink } from './context.js'

export interface QueueOptions {
  maxQueueSize: number
  maxExportBatchSize: number
  scheduledDelayMs: number
}

export type DropReason = 'queue_full' | 'export_failed'

export interface QueueDeps {
  clock: Clock
  /** Sends one batch; rejects when the collector did not take it (its own deadline included). */
  send: (spans: SpanRecord[]) => Promise<void>
  dropped: (reason: DropReason, n: number) => void
  /** An export failed after one succeeded (or at the first): told once per change, not per batch. */
  onExportFailure?: (err: unknown) => void
  onExportRecovered?: () => void
}

export class SpanQueue implements SpanSink {
  private spans: SpanRecord[] = []
  private inFlight: Promise<void> | null = null
  private cancelTimer: (() => void) | null = null
  private failing = false
  private closed = false
  /** Counts since start, for /status. */
  readonly totals = { exported: 0, dropped: 0, failedExports: 0 }

  constructor(
    private readonly opts: QueueOptions,
    private readonly deps: QueueDeps,
  ) {}

  get queued(): number {
    return this.spans.length
  }

  record(span: SpanRecord): void {
    if (this.closed || this.spans.length >= this.opts.maxQueueSize) return this.drop('queue_full', 1)
    this.spans.push(span)
    if (this.spans.length >= this.opts.maxExportBatchSize) this.kick()
    else this.cancelTimer ??= this.deps.clock.timeout(this.opts.scheduledDelayMs, () => this.kick())
  }

  /** Exports everything queued, batch by batch; resolves when done or after `timeoutMs`,
   *  whichever is first (what is left then is dropped and counted). */
  async flush(timeoutMs: number): Promise<void> {
    let expired = false
    let cancel = () => {}
    const deadline = new Promise<void>((resolve) => {
      cancel = this.deps.clock.timeout(timeoutMs, () => {
        expired = true
        resolve()
      })
    })
    const all = (async () => {
      while (!expired && (this.spans.length > 0 || this.inFlight !== null)) {
        if (this.inFlight === null) this.kick()
        await this.inFlight
      }
    })()
    await Promise.race([all, deadline])
    cancel()
  }

  /** Flushes within `timeoutMs`, then takes no more spans. */
  async close(timeoutMs: number): Promise<void> {
    await this.flush(timeoutMs)
    this.closed = true
    this.stopTimer()
    if (this.spans.length > 0) this.drop('queue_full', this.spans.splice(0).length)
  }

  private drop(reason: DropReason, n: number): void {
    this.totals.dropped += n
    this.deps.dropped(reason, n)
  }

  private stopTimer(): void {
    this.cancelTimer?.()
    this.cancelTimer = null
  }

  /** Starts an export of the next batch unless one is under way (its end starts the next). */
  private kick(): void {
    this.stopTimer()
    if (this.inFlight !== null || this.spans.length === 0) return
    const batch = this.spans.splice(0, this.opts.maxExportBatchSize)
    this.inFlight = this.deps.send(batch).then(
      () => {
        this.totals.exported += batch.length
        if (this.failing) {
          this.failing = false
          this.deps.onExportRecovered?.()
        }
      },
      (err: unknown) => {
        this.totals.failedExports++
        this.drop('export_failed', batch.length)
        if (!this.failing) {
          this.failing = true
          this.deps.onExportFailure?.(err)
        }
      },
    )
    void this.inFlight.then(() => {
      this.inFlight = null
      if (this.closed) return
      if (this.spans.length >= this.opts.maxExportBatchSize) this.kick()
      else if (this.spans.length > 0) this.cancelTimer ??= this.deps.clock.timeout(this.opts.scheduledDelayMs, () => this.kick())
    })
  }
}
