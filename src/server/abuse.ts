// What the front door does against abuse, said without flooding the log: each kind of refusal,
// cut or shed is counted (sidecar_rejected_requests_total, and GET /status's rejections) and
// logged as a warning at most once per 10 s per kind, with how many happened since the last.
import type { Clock } from '../clock.js'
import type { ErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'

const EVERY_MS = 10_000

export class AbuseReport {
  private readonly last = new Map<ErrorCode, { at: number; since: number }>()

  constructor(private readonly deps: { clock: Clock; logger: Logger; metrics: Metrics }) {}

  /** One occurrence of `kind`; `what` describes it for the warning. */
  note(kind: ErrorCode, what: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.countRejection(kind)
    const now = this.deps.clock.now()
    const entry = this.last.get(kind)
    if (entry && now - entry.at < EVERY_MS) {
      entry.since++
      return
    }
    this.deps.logger.warn({ kind, ...fields, ...(entry && { sinceLastWarning: entry.since }) }, what)
    this.last.set(kind, { at: now, since: 0 })
  }
}
