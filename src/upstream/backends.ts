// Every backend's state in one owner: per backend its connection pool, circuit breaker, health
// check loop and overload gate, built once per settings and kept across config reloads by one
// diff (`sync`). The layers reach them through the narrow functions the stack hands them; the
// pipeline's last step (`handler`) forwards to the chosen backend's pool.
import type { Clock } from '../clock.js'
import type { Config } from '../config/schema.js'
import { SidecarError } from '../errors.js'
import type { Logger } from '../log.js'
import type { BackendFigures, Metrics } from '../metrics.js'
import type { BufferBudget } from '../pipeline/buffers.js'
import type { Handler } from '../pipeline/types.js'
import { Breaker, type BreakerState } from './breaker.js'
import { Upstream, type PoolOptions } from './client.js'
import { Gate } from './gate.js'
import type { ConcurrencyState } from './concurrency.js'
import { HealthCheck, type BackendHealth } from './health.js'
import { WatchedMaterial } from '../certs/material.js'
import { HandshakeLog, loadUpstreamTls, namedTls, sameTls, tlsFiles, type UpstreamTls } from './tls.js'

export type BackendConfig = Config['backends'][number]
export type BackendsConfig = Pick<Config, 'backends' | 'limits' | 'circuitBreaker'>

export interface BackendsDeps {
  clock: Clock
  /** What responses are read ahead of slow clients from. */
  buffers?: BufferBudget
  logger: Logger
  metrics: Metrics
  /** Told every health verdict (readiness follows the gating backends'), and whether it changed. */
  onHealth?: (backend: string, health: BackendHealth, changed: boolean) => void
  /** [0, 1): the jitter of adaptive concurrency limits (Math.random unless a test brings its own). */
  random?: (() => number) | undefined
}

/** One backend's parts, and the settings each was built from: a part is rebuilt only when its own
 *  settings change. */
export interface Backend {
  readonly name: string
  config: BackendConfig
  keys: { pool: string; breaker: string; health: string; tlsFiles: string }
  /** What the pool was built from (a TLS file change rebuilds it with the rest as it was). */
  pool: PoolOptions
  upstream: Upstream
  /** An https backend's TLS files, watched while configured. */
  tlsFiles: WatchedMaterial<UpstreamTls> | undefined
  /** An https backend's handshakes, for the log. */
  readonly handshakes: HandshakeLog
  breaker: Breaker
  health: HealthCheck
  readonly gate: Gate
}

export interface BackendSnapshot {
  health: BackendHealth
  breaker: BreakerState
  inFlight: { active: number; waiting: number }
  /** Its concurrency limit (backends[].concurrency), when it has one: the limit now and, when
   *  adaptive, the phase and latencies it follows. */
  concurrency: ({ limit: number } & Partial<ConcurrencyState>) | undefined
  /** Connections open to it now, busy or kept alive (sidecar_upstream_connections). */
  connections: number
}

export class Backends {
  private readonly byName = new Map<string, Backend>()
  /** Pools replaced or removed by a reload, finishing what they had in flight. */
  private readonly retiring = new Set<Promise<void>>()
  private started = false

  constructor(
    config: BackendsConfig,
    private readonly deps: BackendsDeps,
    tls?: ReadonlyMap<string, UpstreamTls>,
  ) {
    this.sync(config, tls)
  }

  get(name: string): Backend | undefined {
    return this.byName.get(name)
  }

  /** False while the backend's breaker is open, or after a reload removed it. */
  isAvailable = (name: string): boolean => {
    const b = this.byName.get(name)
    return b !== undefined && b.breaker.state !== 'open'
  }

  /** The health checks' verdict; a name not checked is not held against anyone. */
  isHealthy = (name: string): boolean => this.byName.get(name)?.health.healthy ?? true

  /** Per backend, what the per-backend gauges show. Pools a reload replaced are left out: they
   *  close once what they had in flight is done. */
  figures(): BackendFigures[] {
    return [...this.byName.values()].map(({ name, gate, upstream }) => ({
      backend: name,
      connections: upstream.openConnections,
      active: gate.active,
      waiting: gate.waiting,
      limit: gate.limit === Infinity ? undefined : gate.limit,
      minRttMs: gate.limiter?.state().minRttMs,
    }))
  }

  snapshot(name: string): BackendSnapshot | undefined {
    const b = this.byName.get(name)
    if (!b) return undefined
    const { gate } = b
    return {
      health: b.health.health(),
      breaker: b.breaker.state,
      inFlight: { active: gate.active, waiting: gate.waiting },
      concurrency: gate.limit === Infinity ? undefined : { limit: gate.limit, ...gate.limiter?.state() },
      connections: b.upstream.openConnections,
    }
  }

  /**
   * Makes the backends match a (reloaded) config, part by part:
   * - pool: new settings (TLS material included) get a new pool; the old one finishes what it has
   *   in flight, then closes;
   * - TLS files: watched from the first config naming them; a good change rebuilds the pool;
   * - breaker: new circuitBreaker settings give a fresh closed breaker, else state and counts stay;
   * - health: a new url starts unhealthy and is checked at once; new check settings restart the
   *   loop but keep the verdict;
   * - gate: kept while the backend exists.
   * A removed backend is taken down whole and its gauges removed; a new one is built whole.
   */
  /** `tls`: each https backend's TLS as read from its files (loadBackendTls) before this config
   *  was put in force; a backend without files needs no entry. */
  sync(config: BackendsConfig, tls: ReadonlyMap<string, UpstreamTls> = new Map()): void {
    const wanted = new Set(config.backends.map((b) => b.name))
    for (const [name, backend] of this.byName) {
      if (wanted.has(name)) continue
      this.byName.delete(name)
      this.takeDown(backend)
      this.deps.metrics.removeBackend(name)
    }
    for (const b of config.backends) {
      const pool = poolOptions(b, config, tls)
      const keys = {
        pool: JSON.stringify(pool),
        breaker: JSON.stringify(config.circuitBreaker),
        health: JSON.stringify([b.url, b.healthCheck]),
        tlsFiles: JSON.stringify([b.url, b.tls]),
      }
      const backend = this.byName.get(b.name)
      if (!backend) {
        this.add(b, config, keys, pool)
        continue
      }
      const sameApp = backend.config.url === b.url
      backend.config = b
      this.limitConcurrency(backend)
      if (backend.keys.pool !== keys.pool) this.replacePool(backend, pool)
      if (backend.keys.breaker !== keys.breaker) {
        backend.breaker.shutdown()
        backend.breaker = new Breaker(b.name, config.circuitBreaker, this.deps)
      }
      if (backend.keys.health !== keys.health) {
        backend.health.stop()
        // the same url is the same app: its verdict carries over to the new loop
        backend.health = this.healthCheck(backend, sameApp ? backend.health : undefined)
        if (this.started) backend.health.start()
      }
      if (backend.keys.tlsFiles !== keys.tlsFiles) {
        backend.tlsFiles?.close()
        backend.tlsFiles = this.watchTls(backend)
      }
      backend.keys = keys
    }
  }

  /** Starts every health check loop; the first check of each runs at once. */
  start(): void {
    this.started = true
    for (const b of this.byName.values()) b.health.start()
  }

  /** Stops the health checks (a drain: the verdicts stay as they are). */
  stopChecks(): void {
    this.started = false
    for (const b of this.byName.values()) b.health.stop()
  }

  /** Takes everything down: loops, breakers, and the pools once their requests are done. */
  async close(): Promise<void> {
    this.stopChecks()
    for (const b of this.byName.values()) this.takeDown(b)
    this.byName.clear()
    await Promise.all(this.retiring)
  }

  /** The pipeline's last step: forwards the attempt to `ctx.backend`'s pool. */
  handler(): Handler {
    return (req, ctx, reply) => {
      const backend = ctx.backend === undefined ? undefined : this.byName.get(ctx.backend)
      // only after a reload removed the backend this request's attempt was picked from
      if (!backend) return reply.fail(new SidecarError('no_backend', { detail: `backend ${ctx.backend} was removed from the config` }))
      backend.upstream.request(req, ctx, backend, reply)
    }
  }

  private add(b: BackendConfig, config: BackendsConfig, keys: Backend['keys'], pool: PoolOptions): void {
    const backend = {
      name: b.name,
      config: b,
      keys,
      pool,
      breaker: new Breaker(b.name, config.circuitBreaker, this.deps),
      gate: new Gate(),
      handshakes: new HandshakeLog(b.name, this.deps.logger),
    } as Backend
    backend.upstream = this.newUpstream(backend, pool)
    this.limitConcurrency(backend)
    backend.health = this.healthCheck(backend)
    backend.tlsFiles = this.watchTls(backend)
    this.byName.set(b.name, backend)
    if (this.started) backend.health.start()
  }

  /** The gate follows backends[].concurrency (an adaptive limit keeps its state). */
  private limitConcurrency(backend: Backend): void {
    backend.gate.configure(backend.config.concurrency, { ...this.deps, random: this.deps.random ?? Math.random }, backend.name)
  }

  private healthCheck(backend: Backend, previous?: HealthCheck): HealthCheck {
    const { name } = backend
    return new HealthCheck(
      name,
      backend.config.healthCheck,
      {
        ...this.deps,
        // the backend's pool of the moment: a reload may replace it under a running loop
        probe: (check) => backend.upstream.probe(check),
        onCheck: (health, changed) => {
          // Back from down (a restart, a deploy): its breaker, opened while it was gone, would
          // otherwise refuse it for up to resetTimeoutMs more (Envoy un-ejects on the same event).
          if (changed && health.healthy) backend.breaker.recovered()
          this.deps.onHealth?.(name, health, changed)
        },
      },
      previous,
    )
  }

  /** A new pool for new settings; the old one finishes what it has in flight. */
  private replacePool(backend: Backend, pool: PoolOptions): void {
    this.retire(backend.upstream)
    backend.pool = pool
    backend.upstream = this.newUpstream(backend, pool)
  }

  private newUpstream(backend: Backend, pool: PoolOptions): Upstream {
    const client = pool.tls?.client
    if (client) this.deps.metrics.setUpstreamCertExpiry(backend.name, client.notAfter)
    return new Upstream(backend.name, pool, { ...this.deps, ...(pool.tls && { handshakes: backend.handshakes }) })
  }

  /** Watches an https backend's TLS files: a good change rebuilds its pool, so that new
   *  connections present the rotated client certificate and trust the new CA. */
  private watchTls(backend: Backend): WatchedMaterial<UpstreamTls> | undefined {
    const { tls } = backend.pool
    const files = tlsFiles(backend.config)
    if (tls === undefined || files.length === 0) return undefined
    const watched = new WatchedMaterial(
      tls,
      {
        names: { backend: backend.name },
        files,
        load: () => loadUpstreamTls(backend.config, `backend "${backend.name}": tls`),
        same: sameTls,
        describe: (t) => ({ ca: t.ca !== undefined, client: t.client && { serial: t.client.serial, notAfter: t.client.notAfter.toISOString() } }),
        kind: 'upstream_tls',
        messages: { reloaded: "a backend's TLS files reloaded: new connections use them", failed: "a backend's TLS files reload failed; the last good ones stay in force" },
      },
      this.deps,
    )
    watched.watch((next) => this.replacePool(backend, { ...backend.pool, tls: next }))
    return watched
  }

  private takeDown(backend: Backend): void {
    backend.tlsFiles?.close()
    backend.health.stop()
    backend.breaker.shutdown()
    backend.gate.limiter?.stop()
    this.retire(backend.upstream)
  }

  private retire(upstream: Upstream): void {
    const closing = upstream.close().finally(() => this.retiring.delete(closing))
    this.retiring.add(closing)
  }
}

function poolOptions(b: BackendConfig, config: BackendsConfig, tls: ReadonlyMap<string, UpstreamTls>): PoolOptions {
  const { url, protocol, maxConnections, connectTimeoutMs, idleTimeoutMs } = b
  const { responseIdleTimeoutMs, responseBufferBytes } = config.limits
  const pool: PoolOptions = { url, protocol, maxConnections, connectTimeoutMs, idleTimeoutMs, responseIdleTimeoutMs, responseBufferBytes }
  if (url.startsWith('https:')) {
    const read = tls.get(b.name)
    if (read === undefined && tlsFiles(b).length > 0) throw new Error(`backend ${b.name}: its TLS files were not read before the config was put in force`)
    pool.tls = read ?? namedTls(b)
  }
  return pool
}
