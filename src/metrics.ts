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

  const requests = new Counter({
    name: 'sidecar_requests_total',
    help: 'Requests answered, by backend ("none" when the proxy answered itself), method and status code.',
    labelNames: ['backend', 'method', 'code'] as const,
    registers,
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
  })
  const rejected = new Counter({
    name: 'sidecar_rejected_requests_total',
    help: 'Requests refused by the proxy before reaching a backend, by reason (error code).',
    labelNames: ['reason'] as const,
    registers,
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

  const retries = new Counter({
    name: 'sidecar_retries_total',
    help: 'Retries made, by the backend of the failed attempt and the reason (retryOn condition).',
    labelNames: ['backend', 'reason'] as const,
    registers,
  })
  const retryBudgetExhausted = new Counter({
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

  // Label children are cached: prom-client hashes the label object on every inc() otherwise.
  const children = new Map<string, unknown>()
  const child = <T>(key: string, make: () => T): T => {
    let c = children.get(key) as T | undefined
    if (!c) children.set(key, (c = make()))
    return c
  }

  return {
    registry,
    requests,
    duration,
    attempts,
    rejected,
    openConnections,
    draining,
    retries,
    retryBudgetExhausted,
    circuitState,
    backendHealthy,
    configReloads,
    certExpiry,
    recent,
    /** Counts one call to a backend: upstream_attempts_total. */
    countAttempt(backend: string, result: string): void {
      child(`attempt ${backend} ${result}`, () => attempts.labels(backend, result)).inc()
    },
    /** Counts one finished request: requests_total and request_duration_seconds. */
    observeRequest(backend: string, method: string, code: number, seconds: number): void {
      const m = KNOWN_METHODS.has(method) ? method : 'OTHER'
      child(`request ${backend} ${m} ${code}`, () => requests.labels(backend, m, String(code))).inc()
      child(`duration ${backend}`, () => duration.labels(backend)).observe(seconds)
      recent.record(backend, code)
    },
  }
}

export type Metrics = ReturnType<typeof createMetrics>

/** Requests and 5xx answers per backend in 10-second buckets over the last 5 minutes: the split
 *  and the error rate "right now" for GET /status, which Prometheus counters cannot say alone. */
export class RecentRequests {
  static readonly BUCKET_MS = 10_000
  static readonly BUCKETS = 30
  /** Oldest first; each bucket's start is a multiple of BUCKET_MS. */
  private readonly buckets: Array<{ start: number; counts: Map<string, { requests: number; errors: number }> }> = []

  constructor(private readonly now: () => number) {}

  record(backend: string, status: number): void {
    const start = Math.floor(this.now() / RecentRequests.BUCKET_MS) * RecentRequests.BUCKET_MS
    let bucket = this.buckets.at(-1)
    if (bucket?.start !== start) {
      this.buckets.push((bucket = { start, counts: new Map() }))
      if (this.buckets.length > RecentRequests.BUCKETS) this.buckets.shift()
    }
    let c = bucket.counts.get(backend)
    if (!c) bucket.counts.set(backend, (c = { requests: 0, errors: 0 }))
    c.requests++
    if (status >= 500) c.errors++
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

  private since(windowMs: number) {
    const from = this.now() - windowMs
    return this.buckets.filter((b) => b.start + RecentRequests.BUCKET_MS > from)
  }
}
