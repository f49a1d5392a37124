// The one prom-client registry. Every metric is defined here, once, with the names DESIGN.md
// promises; the only module that imports prom-client.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** Methods outside this set are counted as "OTHER" so a client cannot explode label cardinality. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE'])

export function createMetrics(now: () => number = Date.now) {
  const recent = new RecentRequests(now)
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]

  // The two counters bumped on every request count in plain numbers and hand the counts to
  // prom-client when it is scraped: prom-client hashes and validates the label set on each inc().
  const requestTally = new Tally(3)
  const attemptTally = new Tally(2)
  const requests = new Counter({
    name: 'sidecar_requests_total',
    help: 'Requests answered, by backend ("none" when the proxy answered itself), method and status code.',
    labelNames: ['backend', 'method', 'code'] as const,
    registers,
    collect() {
      requestTally.drain((labels, n) => this.inc({ backend: labels[0]!, method: labels[1]!, code: labels[2]! }, n))
    },
  })
  const duration = new Histogram({
    name: 'sidecar_request_duration_seconds',
    help: 'Time from the request arriving to the last response byte written, by backend.',
    labelNames: ['backend'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  })
  const attempts = new Counter({
    name: 'sidecar_upstream_attempts_total',
    help: 'Calls made to a backend, by result: the status class (2xx..5xx) or the error code.',
    labelNames: ['backend', 'result'] as const,
    registers,
    collect() {
      attemptTally.drain((labels, n) => this.inc({ backend: labels[0]!, result: labels[1]! }, n))
    },
  })
  const openConnections = new Gauge({
    name: 'sidecar_open_connections',
    help: 'Client connections currently open on the listener.',
    registers,
  })

  const draining = new Gauge({
    name: 'sidecar_draining',
    help: '1 from the start of a drain (SIGTERM, POST /drain) until the process exits, else 0.',
    registers,
  })

  // Retries and refusals are tallied like requests and attempts, and also kept per 10 s in
  // `recent` for GET /status.
  const retryTally = new Tally(2)
  const rejectionTally = new Tally(1)
  new Counter({
    name: 'sidecar_retries_total',
    help: 'Retries made, by the backend of the failed attempt and the reason (retryOn condition).',
    labelNames: ['backend', 'reason'] as const,
    registers,
    collect() {
      retryTally.drain((labels, n) => this.inc({ backend: labels[0]!, reason: labels[1]! }, n))
    },
  })
  new Counter({
    name: 'sidecar_rejected_requests_total',
    help: 'Requests refused by the proxy before reaching a backend, by reason (error code).',
    labelNames: ['reason'] as const,
    registers,
    collect() {
      rejectionTally.drain((labels, n) => this.inc({ reason: labels[0]! }, n))
    },
  })
  const budgetExhausted = new Counter({
    name: 'sidecar_retry_budget_exhausted_total',
    help: 'Retries not made because the retry budget was spent.',
    registers,
  })
  const circuitState = new Gauge({
    name: 'sidecar_circuit_state',
    help: 'Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.',
    labelNames: ['backend'] as const,
    registers,
  })
  const backendHealthy = new Gauge({
    name: 'sidecar_backend_healthy',
    help: 'Active health check verdict per backend: 1 healthy, 0 not (or not checked yet).',
    labelNames: ['backend'] as const,
    registers,
  })
  const configReloads = new Counter({
    name: 'sidecar_config_reloads_total',
    help: 'Reloads of the config file or the TLS certificate, by kind (config, tls) and result (success, failure).',
    labelNames: ['kind', 'result'] as const,
    registers,
  })
  const certExpiry = new Gauge({
    name: 'sidecar_tls_cert_expiry_timestamp_seconds',
    help: 'notAfter of the certificate the listener serves, as a Unix timestamp.',
    registers,
  })

  // The histogram's label child is cached: labels() builds a new one on every call.
  const durations = new Map<string, { observe(seconds: number): void }>()
  return {
    registry,
    requests,
    duration,
    attempts,
    openConnections,
    draining,
    circuitState,
    backendHealthy,
    configReloads,
    certExpiry,
    recent,
    /** Counts one call to a backend: upstream_attempts_total. */
    countAttempt(backend: string, result: string): void {
      attemptTally.add(backend, result)
    },
    /** Counts one retry after a failed try on `backend`: retries_total. */
    countRetry(backend: string, reason: string): void {
      retryTally.add(backend, reason)
      recent.recordRetry(backend, reason)
    },
    /** Counts one retry not made for want of budget: retry_budget_exhausted_total. */
    countBudgetExhausted(): void {
      budgetExhausted.inc()
      recent.recordBudgetExhausted()
    },
    /** Counts one request refused before reaching a backend: rejected_requests_total. */
    countRejection(reason: string): void {
      rejectionTally.add(reason)
      recent.recordRejection(reason)
    },
    /** Counts one finished request: requests_total and request_duration_seconds. */
    observeRequest(backend: string, method: string, code: number, seconds: number): void {
      requestTally.add(backend, KNOWN_METHODS.has(method) ? method : 'OTHER', code)
      let d = durations.get(backend)
      if (!d) durations.set(backend, (d = duration.labels(backend)))
      d.observe(seconds)
      recent.record(backend, code)
    },
  }
}

/**
 * Counts per label combination in nested maps (no key string built per count); `drain` hands
 * each combination's count since the last drain to a callback and starts again from zero.
 */
class Tally {
  private readonly root = new Map<string | number, unknown>()

  constructor(private readonly depth: number) {}

  add(...labels: Array<string | number>): void {
    let map = this.root
    for (let i = 0; i < this.depth - 1; i++) {
      let inner = map.get(labels[i]!) as Map<string | number, unknown> | undefined
      if (!inner) map.set(labels[i]!, (inner = new Map()))
      map = inner
    }
    const last = labels[this.depth - 1]!
    map.set(last, ((map.get(last) as number | undefined) ?? 0) + 1)
  }

  drain(fn: (labels: string[], n: number) => void): void {
    const walk = (map: Map<string | number, unknown>, path: string[]) => {
      for (const [key, value] of map) {
        if (value instanceof Map) walk(value as Map<string | number, unknown>, [...path, String(key)])
        else if ((value as number) > 0) {
          fn([...path, String(key)], value as number)
          map.set(key, 0)
        }
      }
    }
    walk(this.root, [])
  }
}

export type Metrics = ReturnType<typeof createMetrics>

/** Requests and 5xx answers per backend in 10-second buckets over the last 5 minutes: the split
 *  and the error rate "right now" for GET /status, which Prometheus counters cannot say alone.
 *  Retries (per backend and reason), refusals (per reason) and retries the budget stopped are
 *  kept in the same buckets. */
export class RecentRequests {
  static readonly BUCKET_MS = 10_000
  static readonly BUCKETS = 30
  /** Oldest first; each bucket's start is a multiple of BUCKET_MS. */
  private readonly buckets: Bucket[] = []

  constructor(private readonly now: () => number) {}

  record(backend: string, status: number): void {
    const counts = this.current().counts
    let c = counts.get(backend)
    if (!c) counts.set(backend, (c = { requests: 0, errors: 0 }))
    c.requests++
    if (status >= 500) c.errors++
  }

  /** A retry after a failed try on `backend`, for `reason` (the retryOn condition). */
  recordRetry(backend: string, reason: string): void {
    const retries = this.current().retries
    let byReason = retries.get(backend)
    if (!byReason) retries.set(backend, (byReason = new Map()))
    byReason.set(reason, (byReason.get(reason) ?? 0) + 1)
  }

  /** A request refused before reaching a backend, for `reason` (its error code). */
  recordRejection(reason: string): void {
    const rejections = this.current().rejections
    rejections.set(reason, (rejections.get(reason) ?? 0) + 1)
  }

  /** A retry not made because the retry budget was spent. */
  recordBudgetExhausted(): void {
    this.current().budgetExhausted++
  }

  /** Totals per backend over the last `windowMs` (whole buckets, the current one included). */
  totals(windowMs = 60_000): Record<string, { requests: number; errors: number }> {
    const out: Record<string, { requests: number; errors: number }> = {}
    for (const b of this.since(windowMs)) {
      for (const [backend, c] of b.counts) {
        const o = (out[backend] ??= { requests: 0, errors: 0 })
        o.requests += c.requests
        o.errors += c.errors
      }
    }
    return out
  }

  /** Retries over the last `windowMs` per backend and reason, and those the budget stopped. */
  retries(windowMs = 60_000): { byBackend: Record<string, Record<string, number>>; budgetExhausted: number } {
    const byBackend: Record<string, Record<string, number>> = {}
    let budgetExhausted = 0
    for (const b of this.since(windowMs)) {
      budgetExhausted += b.budgetExhausted
      for (const [backend, byReason] of b.retries) {
        const o = (byBackend[backend] ??= {})
        for (const [reason, n] of byReason) o[reason] = (o[reason] ?? 0) + n
      }
    }
    return { byBackend, budgetExhausted }
  }

  /** Refusals over the last `windowMs` per reason. */
  rejections(windowMs = 60_000): Record<string, number> {
    const byReason: Record<string, number> = {}
    for (const b of this.since(windowMs)) {
      for (const [reason, n] of b.rejections) byReason[reason] = (byReason[reason] ?? 0) + n
    }
    return byReason
  }

  /** Every bucket of the last 5 minutes, oldest first, empty ones included: a chart's points. */
  series(): Array<{ start: number; requests: number; errors: number }> {
    const last = Math.floor(this.now() / RecentRequests.BUCKET_MS) * RecentRequests.BUCKET_MS
    const byStart = new Map(this.buckets.map((b) => [b.start, b]))
    return Array.from({ length: RecentRequests.BUCKETS }, (_, i) => {
      const start = last - (RecentRequests.BUCKETS - 1 - i) * RecentRequests.BUCKET_MS
      let requests = 0
      let errors = 0
      for (const c of byStart.get(start)?.counts.values() ?? []) {
        requests += c.requests
        errors += c.errors
      }
      return { start, requests, errors }
    })
  }

  /** The bucket of this moment, started if need be (the oldest then goes). */
  private current(): Bucket {
    const start = Math.floor(this.now() / RecentRequests.BUCKET_MS) * RecentRequests.BUCKET_MS
    let bucket = this.buckets.at(-1)
    if (bucket?.start !== start) {
      this.buckets.push((bucket = { start, counts: new Map(), retries: new Map(), rejections: new Map(), budgetExhausted: 0 }))
      if (this.buckets.length > RecentRequests.BUCKETS) this.buckets.shift()
    }
    return bucket
  }

  private since(windowMs: number) {
    const from = this.now() - windowMs
    return this.buckets.filter((b) => b.start + RecentRequests.BUCKET_MS > from)
  }
}

interface Bucket {
  start: number
  counts: Map<string, { requests: number; errors: number }>
  /** backend -> reason -> retries */
  retries: Map<string, Map<string, number>>
  /** reason -> refusals */
  rejections: Map<string, number>
  budgetExhausted: number
}
