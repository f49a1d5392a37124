// The one prom-client registry. Every metric is defined here, once, with the names DESIGN.md
// promises, and written only through the typed recorders below: the only module that imports
// prom-client.
import { totalmem } from 'node:os'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { ErrorCode } from './errors.js'
import type { RequestTrace } from './pipeline/types.js'
import { escapeLabel, toOpenMetrics } from './openmetrics.js'
import { Series, Tally, count } from './tally.js'

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

/** Why a client's TLS handshake with the listener failed (server/tls.ts names it). */
export type HandshakeFailure =
  | 'not_tls'
  | 'protocol_version'
  | 'no_shared_cipher'
  | 'client_rejected_certificate'
  | 'client_certificate_required'
  | 'client_certificate_invalid'
  | 'timeout'
  | 'closed'
  | 'other'
/** What a client connection speaks, once known (after ALPN, or the plain port's first bytes). */
export type ConnectionProtocol = 'http1' | 'http2'
/** The TLS version of a client connection ("none" on the plain port). */
export type ConnectionTls = 'none' | 'TLSv1.2' | 'TLSv1.3'
/** A health check's result: passed, answered but failed, or no answer (refused, timed out). */
export type HealthCheckResult = 'success' | 'failure' | 'error'

/** Prometheus' names for gauges prom-client's defaults call "_total" (promtool refuses the
 *  suffix on a gauge): the same counts by type stay, as nodejs_active_handles{type} etc. */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']

export function createMetrics(opts: { observer?: MetricsObserver; version?: string } = {}) {
  const observer = opts.observer
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  for (const name of MISNAMED_DEFAULTS) registry.removeSingleMetric(name)
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
  // Per backend, read when scraped; reset first, so a backend a reload removed is gone
  let readBackends = (): BackendFigures[] => []
  const perBackend = (name: string, help: string, value: (b: BackendFigures) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ['backend'] as const,
      registers,
      collect() {
        this.reset()
        for (const b of readBackends()) {
          const v = value(b)
          if (v !== undefined) this.set({ backend: b.backend }, v)
        }
      },
    })
  perBackend('sidecar_upstream_connections', 'Connections open to each backend now, busy or kept alive for reuse, the health checks\' included (Envoy\'s upstream_cx_active).', (b) => b.connections)
  perBackend('sidecar_upstream_requests_in_flight', 'Attempts holding a slot of each backend now (sent, or being sent; until the response body is done).', (b) => b.active)
  perBackend('sidecar_upstream_requests_queued', 'Attempts waiting for a slot of each backend now (its concurrency limit or limits.maxConcurrentRequests reached).', (b) => b.waiting)
  perBackend('sidecar_concurrency_limit', 'Each backend\'s concurrency limit now (backends[].concurrency; adaptive ones move with the app\'s latency); none without one.', (b) => b.limit)
  perBackend('sidecar_concurrency_min_latency_seconds', 'The unloaded latency an adaptive concurrency limit compares the app\'s latency with, once measured.', (b) => (b.minRttMs === undefined ? undefined : b.minRttMs / 1000))
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

  // What an operator of Envoy or Linkerd looks for besides the requests: the client
  // connections (by protocol and TLS version), their bytes, the handshakes that failed.
  const handshakeFailures = new Counter({
    name: 'sidecar_tls_handshake_failures_total',
    help: 'Client TLS handshakes with the listener that failed, by reason: not_tls (plain text to the TLS port), protocol_version, no_shared_cipher, client_rejected_certificate (the client does not trust the served certificate), client_certificate_required / client_certificate_invalid (listener.tls.clientCaFile), timeout, closed (the client went away), other.',
    labelNames: ['reason'] as const,
    registers,
  })
  const openedTally = new Tally(2)
  const closedTally = new Tally(2)
  new Counter({
    name: 'sidecar_connections_opened_total',
    help: 'Client connections that began speaking HTTP (after the TLS handshake and ALPN, or the plain port\'s first bytes), by protocol (http1, http2) and tls (TLSv1.2, TLSv1.3, none).',
    labelNames: ['protocol', 'tls'] as const,
    registers,
    collect() {
      openedTally.drain((labels, n) => this.inc({ protocol: labels[0]!, tls: labels[1]! }, n))
    },
  })
  new Counter({
    name: 'sidecar_connections_closed_total',
    help: 'Client connections counted in sidecar_connections_opened_total that have closed, by the same labels.',
    labelNames: ['protocol', 'tls'] as const,
    registers,
    collect() {
      closedTally.drain((labels, n) => this.inc({ protocol: labels[0]!, tls: labels[1]! }, n))
    },
  })
  let readListener = (): ListenerFigures => ({ inFlight: 0, receivedBytes: 0, sentBytes: 0 })
  new Counter({
    name: 'sidecar_connection_received_bytes_total',
    help: 'Bytes received on client connections, as on the wire (TLS records and HTTP/2 frames included).',
    registers,
    collect() {
      this.reset()
      this.inc(readListener().receivedBytes)
    },
  })
  new Counter({
    name: 'sidecar_connection_sent_bytes_total',
    help: 'Bytes sent on client connections, as on the wire.',
    registers,
    collect() {
      this.reset()
      this.inc(readListener().sentBytes)
    },
  })
  new Gauge({
    name: 'sidecar_requests_in_flight',
    help: 'Client requests being served now (received, not yet answered in full); upgraded connections aside.',
    registers,
    collect() {
      this.set(readListener().inFlight)
    },
  })
  const attemptDuration = new CountedHistogram({
    name: 'sidecar_upstream_attempt_duration_seconds',
    help: 'Time from a call to a backend to its response headers (or its failure), per attempt: the app\'s latency as the proxy sees it, retries apart.',
    labelNames: ['backend'] as const,
    buckets: DURATION_BUCKETS,
    registers,
  })
  const circuitTransitions = new Counter({
    name: 'sidecar_circuit_transitions_total',
    help: 'Circuit breaker state changes per backend, from one state to another (closed, half-open, open): an open shorter than a scrape shows here.',
    labelNames: ['backend', 'from', 'to'] as const,
    registers,
  })
  const healthChecks = new Counter({
    name: 'sidecar_health_checks_total',
    help: 'Active health checks per backend, by result: success, failure (answered, not as expected), error (no answer: refused, reset, timed out).',
    labelNames: ['backend', 'result'] as const,
    registers,
  })
  new Gauge({
    name: 'sidecar_build_info',
    help: 'Always 1: the proxy\'s version and the Node.js version it runs on, as labels.',
    labelNames: ['version', 'node_version'] as const,
    registers,
  }).set({ version: opts.version ?? 'unknown', node_version: process.version }, 1)
  const configInfo = new Gauge({
    name: 'sidecar_config_info',
    help: 'Always 1: the version of the config in force (GET /config, GET /status), as a label.',
    labelNames: ['version'] as const,
    registers,
  })
  const configSuccessful = new Gauge({
    name: 'sidecar_config_last_reload_successful',
    help: 'Whether the last read of the config file gave a config that could be used: 1 yes (also at start), 0 no (the last good config stays in force).',
    registers,
  })
  const configLoadedAt = new Gauge({
    name: 'sidecar_config_last_reload_success_timestamp_seconds',
    help: 'When the config in force was loaded (at start, or by the last successful reload), as a Unix timestamp.',
    registers,
  })
  let readReady = () => false
  new Gauge({
    name: 'sidecar_ready',
    help: '1 while GET /ready answers 200 (the listener bound and every gating backend healthy, not draining), else 0.',
    registers,
    collect() {
      this.set(readReady() ? 1 : 0)
    },
  })
  new MemoryLimitGauge({
    name: 'sidecar_memory_limit_bytes',
    help: "The container's memory limit (its cgroup's), the ceiling process_resident_memory_bytes must stay under; no sample without a limit.",
    registers,
  })

  return {
    /** For reading in tests; the proxy itself writes only through the recorders below. */
    registry,
    /** The scrape: GET /metrics's content type and body; OpenMetrics, with the exemplars of the
     *  latency histograms, when the scraper's Accept header asks for it (Prometheus does when
     *  its exemplar storage is on). */
    async exposition(accept = ''): Promise<{ contentType: string; text: string }> {
      const text = await registry.metrics()
      if (!accept.includes('application/openmetrics-text')) return { contentType: registry.contentType, text }
      const exemplars = new Map<string, string>()
      duration.exemplarsInto(exemplars)
      attemptDuration.exemplarsInto(exemplars)
      return { contentType: Registry.OPENMETRICS_CONTENT_TYPE, text: toOpenMetrics(text, exemplars) }
    },
    /** Counts one call to a backend: upstream_attempts_total, by status class or error code,
     *  and upstream_attempt_duration_seconds (with the trace of a sampled request). */
    countAttempt(backend: string, result: string, seconds: number, trace?: RequestTrace): void {
      attemptTally.add(backend, result)
      const series = attemptDuration.series(backend)
      const bucket = series.observe(seconds)
      if (trace?.sampled) series.exemplify(bucket, seconds, trace.traceId, undefined, Date.now())
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
    observeRequest(backend: string, method: string, code: number, seconds: number, route = 'default', trace?: RequestTrace): void {
      requestTally.add(backend, KNOWN_METHODS.has(method) ? method : 'OTHER', code, route)
      const series = duration.series(backend, route)
      const bucket = series.observe(seconds)
      if (trace?.sampled) series.exemplify(bucket, seconds, trace.traceId, trace.spanId, Date.now())
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
    /** A breaker's state change: circuit_state and circuit_transitions_total. */
    circuitTransition(backend: string, from: CircuitState, to: CircuitState): void {
      circuitState.labels(backend).set(CIRCUIT_VALUE[to])
      circuitTransitions.labels(backend, from, to).inc()
    },
    setBackendHealthy(backend: string, healthy: boolean): void {
      backendHealthy.labels(backend).set(healthy ? 1 : 0)
    },
    countHealthCheck(backend: string, result: HealthCheckResult): void {
      healthChecks.labels(backend, result).inc()
    },
    /** A backend removed by a reload leaves its per-backend gauges. */
    removeBackend(backend: string): void {
      circuitState.remove(backend)
      backendHealthy.remove(backend)
      upstreamCertExpiry.remove(backend)
    },
    countConfigReload(kind: ReloadKind, result: 'success' | 'failure'): void {
      configReloads.labels(kind, result).inc()
      if (kind === 'config' && result === 'failure') configSuccessful.set(0)
    },
    /** The config in force (at start, after a reload, or read valid again): config_info and
     *  the last reload's success and time. */
    configInForce(version: string, loadedAt: Date): void {
      configInfo.reset()
      configInfo.labels(version).set(1)
      configSuccessful.set(1)
      configLoadedAt.set(loadedAt.getTime() / 1000)
    },
    /** The notAfter of the certificate the listener serves. */
    setCertExpiry(notAfter: Date): void {
      certExpiry.set(notAfter.getTime() / 1000)
    },
    /** The notAfter of the client certificate a backend is shown. */
    setUpstreamCertExpiry(backend: string, notAfter: Date): void {
      upstreamCertExpiry.labels(backend).set(notAfter.getTime() / 1000)
    },
    /** A TCP connection accepted on the listener, and closed: open_connections. */
    connectionOpened(): void {
      openConnections.inc()
    },
    connectionClosed(): void {
      openConnections.dec()
    },
    /** A client connection began speaking HTTP: connections_opened_total. */
    protocolOpened(protocol: ConnectionProtocol, tls: ConnectionTls): void {
      openedTally.add(protocol, tls)
    },
    /** ... and closed: connections_closed_total. */
    protocolClosed(protocol: ConnectionProtocol, tls: ConnectionTls): void {
      closedTally.add(protocol, tls)
    },
    /** A client's TLS handshake failed: tls_handshake_failures_total. */
    countHandshakeFailure(reason: HandshakeFailure): void {
      handshakeFailures.labels(reason).inc()
    },
    /** requests_in_flight and the connections' bytes are read from `read` when scraped. */
    watchListener(read: () => ListenerFigures): void {
      readListener = read
    },
    /** sidecar_ready is read from `read` when scraped. */
    watchReadiness(read: () => boolean): void {
      readReady = read
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
    /** The per-backend gauges (connections, in flight, queued, concurrency) are read from
     *  `read` when scraped. */
    watchBackends(read: () => BackendFigures[]): void {
      readBackends = read
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

type HistogramValue = { labels: Record<string, string | number>; sharedLabels?: Record<string, string>; value: number; metricName: string }

/**
 * A histogram of one or two labels observed in plain numbers (Series, one per label pair, kept
 * in nested maps) and handed to prom-client only when scraped, as the values its own histogram
 * hands its registry (test/metrics.test.ts compares the two texts). prom-client's observe()
 * builds, checks and hashes the label set on every call: 0.27 us a request, against 0.01.
 */
class CountedHistogram<L extends string> extends Histogram<L> {
  private readonly name: string
  private readonly help: string
  private readonly bounds: readonly number[]
  private readonly labelPair: readonly [L] | readonly [L, L]
  private readonly byFirst = new Map<string, Map<string, Series>>()

  constructor(config: { name: string; help: string; labelNames: readonly [L] | readonly [L, L]; buckets: number[]; registers: Registry[] }) {
    super(config)
    this.name = config.name
    this.help = config.help
    this.bounds = config.buckets
    this.labelPair = config.labelNames
  }

  /** The observations of one label set (`b` only for a histogram of two labels). */
  series(a: string, b = ''): Series {
    let bySecond = this.byFirst.get(a)
    if (!bySecond) this.byFirst.set(a, (bySecond = new Map()))
    let series = bySecond.get(b)
    if (!series) bySecond.set(b, (series = new Series(this.bounds)))
    return series
  }

  /** What the registry formats as text: per label set, its buckets, +Inf, sum and count. */
  getForPromString(): Promise<{ name: string; help: string; type: string; aggregator: string; values: HistogramValue[] }> {
    const values: HistogramValue[] = []
    const name = this.name
    const [first, second] = this.labelPair
    for (const [a, bySecond] of this.byFirst) {
      for (const [b, s] of bySecond) {
        const sharedLabels: Record<string, string> = second === undefined ? { [first]: a } : { [first]: a, [second]: b }
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

  /** Each exemplar, by the bucket line it goes with as the registry writes it
   *  (`name_bucket{le="0.1",backend="app"}`), as OpenMetrics writes one (`{trace_id="..."} 0.07 1700000000.5`). */
  exemplarsInto(into: Map<string, string>): void {
    const [first, second] = this.labelPair
    for (const [a, bySecond] of this.byFirst) {
      for (const [b, s] of bySecond) {
        if (s.exemplars === undefined) continue
        const labels = second === undefined ? `${first}="${escapeLabel(a)}"` : `${first}="${escapeLabel(a)}",${second}="${escapeLabel(b)}"`
        s.exemplars.forEach((e, i) => {
          if (e === undefined) return
          const le = i < this.bounds.length ? this.bounds[i]! : '+Inf'
          const ids = e.spanId === undefined ? `trace_id="${e.traceId}"` : `trace_id="${e.traceId}",span_id="${e.spanId}"`
          into.set(`${this.name}_bucket{le="${le}",${labels}}`, `{${ids}} ${e.value} ${e.timestampMs / 1000}`)
        })
      }
    }
  }

  /** As JSON (`getMetricsAsJSON`): each value's labels and shared labels in one. */
  override async get(): ReturnType<Histogram<L>['get']> {
    const metric = await this.getForPromString()
    const values = metric.values.map(({ labels, sharedLabels, value, metricName }) => ({ labels: { ...labels, ...sharedLabels }, value, metricName }))
    return { ...metric, values } as unknown as Awaited<ReturnType<Histogram<L>['get']>>
  }
}

/** One backend's figures, read when scraped. */
export interface BackendFigures {
  backend: string
  connections: number
  active: number
  waiting: number
  /** Its concurrency limit, when it has one; the unloaded latency an adaptive one found (ms). */
  limit: number | undefined
  minRttMs: number | undefined
}

/** What the listener is asked for when scraped: requests in flight, and its connections'
 *  bytes since start (the closed ones' and the open ones' so far). */
export interface ListenerFigures {
  inFlight: number
  receivedBytes: number
  sentBytes: number
}

/** The cgroup's memory limit, read at each scrape (a pod may be resized in place): a gauge with
 *  no sample at all without a limit, where prom-client's would say 0. */
class MemoryLimitGauge extends Gauge {
  override async get(): ReturnType<Gauge['get']> {
    const metric = await super.get()
    const limit = memoryLimit()
    return { ...metric, values: limit === undefined ? [] : [{ value: limit, labels: {} }] }
  }
}

/** The cgroup's memory limit (libuv reads it), or undefined without one: libuv then answers 0 or
 *  2^64, more than the machine has. */
export function memoryLimit(limit = process.constrainedMemory?.() ?? 0, machine = totalmem()): number | undefined {
  return limit > 0 && limit < machine ? limit : undefined
}

export type Metrics = ReturnType<typeof createMetrics>

export type MirrorResult = 'sent' | 'failed' | 'dropped' | 'skipped_body'
