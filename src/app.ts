// Wiring only: builds the backends, the request path, the listener and the admin server from one
// Config, swaps a reloaded config in, and takes everything down in order. Each concept has its
// owner elsewhere: backends (upstream/backends.ts), reload (config/reload.ts), readiness
// (admin/readiness.ts), drain (lifecycle/drain.ts), the listener's certificate (server/tls.ts),
// the backends' TLS files (upstream/tls.ts).
import type { AddressInfo } from 'node:net'
import { BackendLatches, Readiness } from './admin/readiness.js'
import { RecentRequests } from './admin/recent.js'
import { AdminServer } from './admin/server.js'
import { statusOf } from './admin/status.js'
import { version } from './cli/usage.js'
import { systemClock, type Clock } from './clock.js'
import { LiveConfig, type ConfigFile, type ReloadResult } from './config/reload.js'
import type { Config } from './config/schema.js'
import { gatesReadiness, parseAddress } from './config/settings.js'
import { drainAndStop } from './lifecycle/drain.js'
import { levelOf, type Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { BufferBudget } from './pipeline/buffers.js'
import { Listener } from './server/listener.js'
import { prepareListenerTls } from './server/tls.js'
import { buildStack } from './stack.js'
import { RateLimitTables } from './layers/rate-limit.js'
import { startTracing, type Tracing } from './tracing/tracer.js'
import { Backends } from './upstream/backends.js'
import { loadBackendTls } from './upstream/tls.js'
import type { BackendHealth } from './upstream/health.js'

export type { ReloadResult }

export interface App {
  readonly listenerAddress: AddressInfo
  readonly adminAddress: AddressInfo
  readonly metrics: Metrics
  readonly readiness: Readiness
  /** Each backend's health-check verdict. */
  backends(): Record<string, BackendHealth | undefined>
  /** The config in force and its version. */
  config(): { config: Config; version: string }
  /** GET /status's body. */
  status(): ReturnType<typeof statusOf>
  /** Reads the config file again and swaps a valid one in (config/reload.ts). */
  reload(reason: string): Promise<ReloadResult>
  /**
   * Drains and stops (lifecycle/drain.ts): readiness fails at once, requests are still served
   * for `delayMs`, then in-flight ones get until drain.timeoutMs. Resolves with the number cut.
   * Called again, it returns the drain already under way.
   */
  close(reason?: string, delayMs?: number): Promise<number>
}

export interface AppDeps {
  logger: Logger
  /** Time for every timer and deadline; the system clock unless a test brings its own. */
  clock?: Clock
  /** Asked for by the admin port (POST /drain, POST /quitquitquit); the caller drains and exits. */
  requestStop?: (reason: string, immediate: boolean) => void
  /** The config file, watched for changes. Without it the config is fixed for the life of the process. */
  configFile?: ConfigFile
  /** [0, 1): which requests get an injected fault or a mirrored copy; Math.random unless a test
   *  brings its own. */
  random?: () => number
}

const gatingBackends = (config: Config) => config.backends.filter(gatesReadiness).map((b) => b.name)

export async function startApp(initial: Config, deps: AppDeps): Promise<App> {
  const { logger } = deps
  const clock = deps.clock ?? systemClock
  const recent = new RecentRequests(() => clock.now())
  const metrics = createMetrics({ observer: recent, version: version() })
  const readiness = new Readiness(
    (ready, holding) => (ready ? logger.info('ready: every readiness latch released') : logger.info({ holding }, 'not ready')),
    { listener: 'the listener is not bound yet' },
  )

  const tls = await prepareListenerTls(initial.listener, { clock, logger, metrics })
  const latches = new BackendLatches(readiness, (name) => backends.snapshot(name)?.health)
  // request bodies and responses held for slow peers, all under one ceiling
  const buffers = new BufferBudget(initial.limits.bufferMemoryBytes, () => clock.now())
  metrics.watchBuffers(() => buffers.used)
  const backends: Backends = new Backends(
    initial,
    { clock, logger, metrics, buffers, random: deps.random, onHealth: (name) => latches.follow(name) },
    await loadBackendTls(initial.backends),
  )
  metrics.watchBackends(() => backends.figures())
  latches.set(gatingBackends(initial))

  // Tracing only when configured: the OTLP exporter is loaded then, and not otherwise.
  let tracing: Tracing | undefined
  try {
    tracing = initial.tracing === undefined ? undefined : await startTracing(initial.tracing, { clock, logger, metrics })
  } catch (err) {
    await backends.close()
    throw err
  }

  // The request path in force. A request keeps the handler it started with, so a reload
  // (which replaces this binding) never touches a request already under way.
  const stackDeps = { logger, metrics, clock, backends, buffers, rateLimits: new RateLimitTables(clock), tracing, random: deps.random }
  let handler = buildStack(initial, stackDeps)
  const live = new LiveConfig(initial, deps.configFile, {
    clock,
    logger,
    metrics,
    apply: async (config) => {
      const tls = await loadBackendTls(config.backends) // a file that cannot be used fails the reload here
      backends.sync(config, tls)
      handler = buildStack(config, stackDeps)
      latches.set(gatingBackends(config))
      logger.level = levelOf(config.log.level)
    },
  })

  const listener = new Listener(
    { ...parseAddress(initial.listener.address)!, ...initial.listener, ...initial.limits, tls: tls?.options ?? false },
    (req, ctx, reply) => handler(req, ctx, reply),
    { logger, metrics, clock, buffers },
  )
  metrics.watchListener(() => listener.figures())
  metrics.watchReadiness(() => Object.keys(readiness.holding()).length === 0)
  const backendHealth = () => Object.fromEntries(live.current.config.backends.map((b) => [b.name, backends.snapshot(b.name)?.health]))
  const status = () =>
    statusOf({
      ...live.current,
      holding: readiness.holding(),
      backend: (name) => backends.snapshot(name),
      recent,
      tunnels: listener.tunnelCount,
      connections: listener.connectionCount,
      connectionStates: listener.connectionStates(),
      clients: listener.clients(),
      evictions: metrics.evictionTotals(),
      certificate: tls?.certificate.material,
      tracing: tracing?.status(),
      totals: metrics.faultAndMirrorTotals(),
    })
  const admin = new AdminServer(parseAddress(initial.admin.address)!, {
    readiness,
    metrics: (accept) => metrics.exposition(accept),
    logger,
    backends: backendHealth,
    config: () => ({ ...live.current, config: redacted(live.current.config), loadedAt: live.current.loadedAt.toISOString() }),
    status,
    requestStop: deps.requestStop ?? (() => {}),
  })

  // Admin first: the startupProbe can then see the proxy come up.
  let adminAddress: AddressInfo
  let listenerAddress: AddressInfo
  try {
    adminAddress = await admin.listen()
    listenerAddress = await listener.listen()
  } catch (err) {
    await Promise.all([admin.close(), backends.close(), tracing?.close(0)])
    throw err
  }
  live.watch()
  tls?.certificate.watch((served) => listener.setCertificate(served))
  backends.start()
  readiness.release('listener')
  logger.info(
    {
      listener: `${listener.protocol}://${formatAddress(listenerAddress)}`,
      admin: `http://${formatAddress(adminAddress)}`,
      backends: initial.backends.map((b) => ({ name: b.name, url: b.url, weight: b.weight })),
      version: live.current.version,
    },
    'sidecar-proxy started',
  )

  let closing: Promise<number> | undefined
  return {
    listenerAddress,
    adminAddress,
    metrics,
    readiness,
    backends: backendHealth,
    config: () => ({ config: live.current.config, version: live.current.version }),
    status,
    reload: (reason) => live.reload(reason),
    close(reason = 'stop', delayMs = 0) {
      live.stop() // draining: no config is swapped in while the pools close
      closing ??= drainAndStop(
        {
          listener,
          stopBackground: () => {
            tls?.certificate.close()
            backends.stopChecks()
          },
          // the spans of the last requests go out before the exporter closes (what is left of drain.timeoutMs)
          flush: tracing && ((timeoutMs) => tracing.close(timeoutMs)),
          closeRest: () => Promise.all([admin.close(), backends.close()]).then(() => undefined),
        },
        { reason, delayMs, timeoutMs: live.current.config.drain.timeoutMs },
        { clock, logger, metrics, readiness },
      )
      return closing
    },
  }
}

/** GET /config's view: the OTLP headers' values (API keys) are not shown. */
function redacted(config: Config): Config {
  const otlp = config.tracing?.otlp
  if (otlp === undefined || Object.keys(otlp.headers).length === 0) return config
  const headers = Object.fromEntries(Object.keys(otlp.headers).map((name) => [name, '(redacted)']))
  return { ...config, tracing: { ...config.tracing!, otlp: { ...otlp, headers } } }
}

function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}
