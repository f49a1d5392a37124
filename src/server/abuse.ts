// What the front door does against abuse, said without flooding the log: each kind of refusal,
// cut or shed is counted (sidecar_rejected_requests_total, and GET /status's rejections), each
// eviction to make room at a ceiling by resource and reason (sidecar_evictions_total, GET
// /status's evictions), and each kind is logged as a warning at most once per 10 s, with how many
// happened since the last.
import type { Clock } from '../clock.js'
import type { ErrorCode } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Resource } from '../pipeline/types.js'

const EVERY_MS = 10_000

export class AbuseReport {
  private readonly last = new Map<string, { at: number; since: number }>()

  constructor(private readonly deps: { clock: Clock; logger: Logger; metrics: Metrics }) {}

  /** One occurrence of `kind`; `what` describes it for the warning. */
  note(kind: ErrorCode, what: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.countRejection(kind)
    this.warn(kind, what, { kind, ...fields })
  }

  /** A connection or exchange evicted to make room at `resource`, for `reason`. */
  evicted(resource: Resource, reason: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.countEviction(resource, reason)
    this.warn(`${resource}/${reason}`, `${EVICTED[resource]} reached: closed ${WHO[reason] ?? reason} to make room`, { resource, reason, ...fields })
  }

  private warn(kind: string, what: string, fields: Record<string, unknown>): void {
    const now = this.deps.clock.now()
    const entry = this.last.get(kind)
    if (entry && now - entry.at < EVERY_MS) {
      entry.since++
      return
    }
    this.deps.logger.warn({ ...fields, ...(entry && { sinceLastWarning: entry.since }) }, what)
    this.last.set(kind, { at: now, since: 0 })
  }
}

const EVICTED: Record<Resource, string> = {
  connections: 'limits.maxConnections',
  requests: "a backend's limits.maxConcurrentRequests",
  buffers: 'limits.bufferMemoryBytes',
}

const WHO: Record<string, string> = {
  handshake: 'the connection whose TLS handshake was pending longest',
  silent: 'the connection that had sent no request for longest',
  idle: 'the connection idle longest',
  stalled: 'the connection whose every exchange had stalled on its client longest',
  slow_reader: 'the exchange whose client had read nothing of its answer for longest',
  slow_body: 'the exchange whose client was furthest behind in sending its body',
}
