// The one prom-client registry. Every metric is defined here, once, with the names DESIGN.md
// promises, and written only through the typed recorders below: the only module that imports
// prom-client.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { ErrorCode } from './errors.js'

/** Methods outside this set are counted as "OTHER" so a client cannot explode label cardinality. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE'])

/** Hears what the counters count, for views Prometheus cannot give alone (the admin's "last
 *  minute", admin/recent.ts). */
export interface MetricsObserver {
  record(backend: string, status: number, route: string): void
  recordRetry(backend: string, reason: string): void
  recordRejection(reason: string): void
  recordBudgetExhausted(): void
}

export type CircuitState = 'closed' | 'half-open' | 'open'
/** sidecar_circuit_state's encoding, documented in its help text. */
const CIRCUIT_VALUE: Record<CircuitState, number> = { closed: 0, 'half-open': 1, open: 2 }

export type ReloadKind = 'config' | 'tls' | 'upstream_tls'

export function createMetrics(opts: { observer?: MetricsObserver } = {}) {
  const observer = opts.observer
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]

  // What every request bumps (these two counters and the duration histogram below) is counted
  // in plain numbers and handed to prom-client when it is scraped: prom-client hashes and
  // validates the label set on each inc() and observe().
  const requestTally = new Tally(4)
  const attemptTally = new Tally(2)
  new Counter({
    name: 'sidecar_requests_total',
    help: 'Requests answered, by backend ("none" when the proxy answered itself), method, status code and route (its name; "default": no route matched).',
    labelNames: ['backend', 'method', 'code', 'route'] as const,
    registers,
    collect() {
      requestTally.drain((labels, n) => this.inc({ backend: labels[0]!, method: labels[1]!, code: labels[2]!, route: labels[3]! }, n))
    },
  })
  const duration = new CountedHistogram({
    name: 'sidecar_request_duration_seconds',
    help: 'Time from the request arriving to the last response byte written, by backend and route.',
    labelNames: ['backend', 'route'] as const,
    buckets: DURATION_BUCKETS,
    registers,
  })
  new Counter({
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

  const openTunnels = new Gauge({
    name: 'sidecar_open_tunnels',
    help: 'Upgraded connections (WebSocket and other HTTP/1.1 upgrades) joined to the app now.',
    registers,
  })
  let readBuffered = () => 0
  new Gauge({
    name: 'sidecar_buffered_bytes',
    help: 'Bytes held for slow peers: request bodies received before the app is asked, responses read ahead of slow clients (limits.bufferMemoryBytes at most).',
    registers,
    collect() {
      this.set(readBuffered())
    },
  })
  let readUpstreamConnections = (): Array<[string, number]> => []
  new Gauge({
    name: 'sidecar_upstream_connections',
    help: 'Connections open to each backend now, busy or kept alive for reuse, the health checks\' included (Envoy\'s upstream_cx_active).',
    labelNames: ['backend'] as const,
    registers,
    collect() {
      this.reset() // a backend a reload removed is gone from the exposition
      for (const [backend, n] of readUpstreamConnections()) this.set({ backend }, n)
    },
  })
  const drainingGauge = new Gauge({
    name: 'sidecar_draining',
    help: '1 from the start of a drain (SIGTERM, POST /drain) until the process exits, else 0.',
    registers,
  })

  // Retries and refusals are tallied like requests and attempts (and told to the observer).
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
  // Evictions: a handful of label sets (three resources, six reasons), kept as totals for /status.
  const evictionTotals: Record<string, Record<string, number>> = Object.create(null)
  const evictions = new Counter({
    name: 'sidecar_evictions_total',
    help: 'Connections and exchanges closed to make room at a ceiling, by resource (connections: limits.maxConnections; requests: a backend\'s limits.maxConcurrentRequests; buffers: limits.bufferMemoryBytes) and reason (handshake, silent, idle, stalled: a connection; slow_reader, slow_body: an exchange whose client stalled).',
    labelNames: ['resource', 'reason'] as const,
    registers,
  })
  const droppedHeaders = new Counter({
    name: 'sidecar_request_headers_dropped_total',
    help: 'Request headers not forwarded to the app, by reason (underscore: a name holding "_", see listener.headersWithUnderscores).',
    labelNames: ['reason'] as const,
    registers,
  })
  // Injected faults and mirrored copies: a handful of label sets (routes, backends are bounded
  // by the config), counted as they happen, and kept as totals for /status.
  const faultTotals: Record<string, Record<string, number>> = Object.create(null)
  const faults = new Counter({
    name: 'sidecar_faults_injected_total',
    help: 'Faults injected on purpose (fault, routes[].fault), by route and kind (delay, abort).',
    labelNames: ['route', 'kind'] as const,
    registers,
  })
  const mirrorTotals: Record<string, Record<string, number>> = Object.create(null)
  const mirrors = new Counter({
    name: 'sidecar_mirror_requests_total',
    help: 'Copies of requests for a shadow backend (mirror), by backend and result: sent (answered, any status), failed (no answer: refused, reset, timed out), dropped (past mirror.maxInFlight, or the copy could not keep up with the body), skipped_body (a body over retry.maxReplayBytes).',
    labelNames: ['backend', 'result'] as const,
    registers,
  })
  const budgetExhausted = new Counter({
    name: 'sidecar_retry_budget_exhausted_total',
    help: 'Retries not made because the retry budget was spent.',
    registers,
  })
  const circuitState = new Gauge({
    name: 'sidecar_circuit_state',
    help: `Circuit breaker state per backend: ${Object.entries(CIRCUIT_VALUE).map(([state, n]) => `${n} ${state}`).join(', ')}.`,
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
    help: "Reloads of the config file, the listener's certificate or a backend's TLS files, by kind (config, tls, upstream_tls) and result (success, failure).",
    labelNames: ['kind', 'result'] as const,
    registers,
  })
  const certExpiry = new Gauge({
    name: 'sidecar_tls_cert_expiry_timestamp_seconds',
    help: 'notAfter of the certificate the listener serves, as a Unix timestamp.',
    registers,
  })
  const upstreamCertExpiry = new Gauge({
    name: 'sidecar_upstream_tls_cert_expiry_timestamp_seconds',
    help: 'notAfter of the client certificate shown to each https backend (backends[].tls.certFile), as a Unix timestamp.',
    labelNames: ['backend'] as const,
    registers,
  })

  const spansDropped = new Counter({
    name: 'sidecar_spans_dropped_total',
    help: 'Sampled spans not exported, by reason: queue_full (tracing.batch.maxQueueSize reached: the collector is slow or down), export_failed (the collector refused the batch or did not answer within tracing.otlp.timeoutMs).',
    labelNames: ['reason'] as const,
    registers,
  })

  return {
    /** For reading in tests; the proxy itself writes only through the recorders below. */
    registry,
    /** The scrape: GET /metrics's content type and body. */
    async exposition(): Promise<{ contentType: string; text: string }> {
      return { contentType: registry.contentType, text: await registry.metrics() }
    },
    /** Counts one call to a backend: upstream_attempts_total, by status class or error code. */
    countAttempt(backend: string, result: string): void {
      attemptTally.add(backend, result)
    },
    /** Counts one retry after a failed try on `backend`: retries_total. */
    countRetry(backend: string, reason: string): void {
      retryTally.add(backend, reason)
      observer?.recordRetry(backend, reason)
    },
    /** Counts one retry not made for want of budget: retry_budget_exhausted_total. */
    countBudgetExhausted(): void {
      budgetExhausted.inc()
      observer?.recordBudgetExhausted()
    },
    /** Counts one connection or exchange evicted to make room at `resource`: evictions_total. */
    countEviction(resource: string, reason: string): void {
      evictions.inc({ resource, reason })
      const byReason = (evictionTotals[resource] ??= Object.create(null) as Record<string, number>)
      byReason[reason] = (byReason[reason] ?? 0) + 1
    },
    /** Evictions since start, by resource and reason (GET /status). */
    evictionTotals(): Record<string, Record<string, number>> {
      return structuredClone(evictionTotals)
    },
    /** Counts one request refused before reaching a backend: rejected_requests_total. */
    countRejection(reason: ErrorCode): void {
      rejectionTally.add(reason)
      observer?.recordRejection(reason)
    },
    /** Counts one finished request: requests_total and request_duration_seconds. `route` is a
     *  configured route's name (bounded by the config), never the path. */
    observeRequest(backend: string, method: string, code: number, seconds: number, route = 'default'): void {
      requestTally.add(backend, KNOWN_METHODS.has(method) ? method : 'OTHER', code, route)
      duration.series(backend, route).observe(seconds)
      observer?.record(backend, code, route)
    },
    /** Counts one injected fault: faults_injected_total. */
    countFault(route: string, kind: 'delay' | 'abort'): void {
      faults.labels(route, kind).inc()
      count(faultTotals, route, kind)
    },
    /** Counts one mirrored copy's fate: mirror_requests_total. */
    countMirror(backend: string, result: MirrorResult): void {
      mirrors.labels(backend, result).inc()
      count(mirrorTotals, backend, result)
    },
    /** Faults injected since start, per route and kind; mirrored copies per backend and result. */
    faultAndMirrorTotals(): { faults: Record<string, Record<string, number>>; mirror: Record<string, Record<string, number>> } {
      return structuredClone({ faults: faultTotals, mirror: mirrorTotals })
    },
    countDroppedHeaders(reason: 'underscore', n: number): void {
      droppedHeaders.labels(reason).inc(n)
    },
    setCircuitState(backend: string, state: CircuitState): void {
      circuitState.labels(backend).set(CIRCUIT_VALUE[state])
    },
    setBackendHealthy(backend: string, healthy: boolean): void {
      backendHealthy.labels(backend).set(healthy ? 1 : 0)
    },
    /** A backend removed by a reload leaves its per-backend gauges. */
    removeBackend(backend: string): void {
      circuitState.remove(backend)
      backendHealthy.remove(backend)
      upstreamCertExpiry.remove(backend)
    },
    countConfigReload(kind: ReloadKind, result: 'success' | 'failure'): void {
      configReloads.labels(kind, result).inc()
    },
    /** The notAfter of the certificate the listener serves. */
    setCertExpiry(notAfter: Date): void {
      certExpiry.set(notAfter.getTime() / 1000)
    },
    /** The notAfter of the client certificate a backend is shown. */
    setUpstreamCertExpiry(backend: string, notAfter: Date): void {
      upstreamCertExpiry.labels(backend).set(notAfter.getTime() / 1000)
    },
    connectionOpened(): void {
      openConnections.inc()
    },
    connectionClosed(): void {
      openConnections.dec()
    },
    tunnelOpened(): void {
      openTunnels.inc()
    },
    tunnelClosed(): void {
      openTunnels.dec()
    },
    /** sidecar_buffered_bytes is read from `read` when scraped. */
    watchBuffers(read: () => number): void {
      readBuffered = read
    },
    /** sidecar_upstream_connections is read from `read` when scraped. */
    watchUpstreamConnections(read: () => Array<[string, number]>): void {
      readUpstreamConnections = read
    },
    /** Spans of sampled requests that were not exported: spans_dropped_total. */
    countSpansDropped(reason: 'queue_full' | 'export_failed', n: number): void {
      spansDropped.labels(reason).inc(n)
    },
    setDraining(draining: boolean): void {
      drainingGauge.set(draining ? 1 : 0)
    },
  }
}

const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

/** One label set's observations: a count per bucket (the last past every bound), sum, count. */
class Series {
  readonly counts: number[]
  sum = 0
  count = 0

  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0)
  }

  observe(value: number): void {
    const bounds = this.bounds
    let i = 0
    while (i < bounds.length && value > bounds[i]!) i++
    this.counts[i]!++
    this.sum += value
    this.count++
  }
}

type HistogramValue = { labels: Record<string, string | number>; sharedLabels?: Record<string, string>; value: number; metricName: string }

/**
 * A histogram of two labels observed in plain numbers (Series, one per label pair, kept in
 * nested maps) and handed to prom-client only when scraped, as the values its own histogram
 * hands its registry (test/metrics.test.ts compares the two texts). prom-client's observe()
 * builds, checks and hashes the label set on every call: 0.27 us a request, against 0.01.
 */
class CountedHistogram extends Histogram<'backend' | 'route'> {
  private readonly name: string
  private readonly help: string
  private readonly bounds: readonly number[]
  private readonly byBackend = new Map<string, Map<string, Series>>()

  constructor(config: { name: string; help: string; labelNames: readonly ['backend', 'route']; buckets: number[]; registers: Registry[] }) {
    super(config)
    this.name = config.name
    this.help = config.help
    this.bounds = config.buckets
  }

  series(backend: string, route: string): Series {
    let byRoute = this.byBackend.get(backend)
    if (!byRoute) this.byBackend.set(backend, (byRoute = new Map()))
    let series = byRoute.get(route)
    if (!series) byRoute.set(route, (series = new Series(this.bounds)))
    return series
  }

  /** What the registry formats as text: per label set, its buckets, +Inf, sum and count. */
  getForPromString(): Promise<{ name: string; help: string; type: string; aggregator: string; values: HistogramValue[] }> {
    const values: HistogramValue[] = []
    const name = this.name
    for (const [backend, byRoute] of this.byBackend) {
      for (const [route, s] of byRoute) {
        const sharedLabels = { backend, route }
        let cumulative = 0
        for (let i = 0; i < this.bounds.length; i++) {
          cumulative += s.counts[i]!
          values.push({ labels: { le: this.bounds[i]! }, sharedLabels, value: cumulative, metricName: `${name}_bucket` })
        }
        values.push({ labels: { le: '+Inf' }, sharedLabels, value: s.count, metricName: `${name}_bucket` })
        values.push({ labels: {}, sharedLabels, value: s.sum, metricName: `${name}_sum` })
        values.push({ labels: {}, sharedLabels, value: s.count, metricName: `${name}_count` })
      }
    }
    return Promise.resolve({ name, help: this.help, type: 'histogram', aggregator: 'sum', values })
  }

  /** As JSON (`getMetricsAsJSON`): each value's labels and shared labels in one. */
  override async get(): ReturnType<Histogram<'backend' | 'route'>['get']> {
    const metric = await this.getForPromString()
    const values = metric.values.map(({ labels, sharedLabels, value, metricName }) => ({ labels: { ...labels, ...sharedLabels }, value, metricName }))
    return { ...metric, values } as unknown as Awaited<ReturnType<Histogram<'backend' | 'route'>['get']>>
  }
}

/** One more in `totals[a][b]` (prototype-free records: a route may be named "constructor"). */
function count(totals: Record<string, Record<string, number>>, a: string, b: string): void {
  const inner = (totals[a] ??= Object.create(null) as Record<string, number>)
  inner[b] = (inner[b] ?? 0) + 1
}

/**
 * Counts per label combination in nested maps (no key string built per count); `drain` hands
 * each combination's count since the last drain to a callback and starts again from zero.
 */
class Tally {
  private readonly root = new Map<string | number, unknown>()

  constructor(private readonly depth: 1 | 2 | 3 | 4) {}

  /** One more for the labels, `depth` of them (no array made per call). */
  add(a: string, b?: string | number, c?: string | number, d?: string | number): void {
    const depth = this.depth
    let map = this.root
    if (depth > 1) map = this.inner(map, a)
    if (depth > 2) map = this.inner(map, b!)
    if (depth > 3) map = this.inner(map, c!)
    const last = depth === 1 ? a : depth === 2 ? b! : depth === 3 ? c! : d!
    map.set(last, ((map.get(last) as number | undefined) ?? 0) + 1)
  }

  private inner(map: Map<string | number, unknown>, key: string | number): Map<string | number, unknown> {
    let inner = map.get(key) as Map<string | number, unknown> | undefined
    if (!inner) map.set(key, (inner = new Map()))
    return inner
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

export type MirrorResult = 'sent' | 'failed' | 'dropped' | 'skipped_body'
