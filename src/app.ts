// Wiring only: builds the upstream pools, the pipeline, the listener and the admin server from
// one Config, and takes them down in order.
import { readFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import { AdminServer } from './admin/server.js'
import { Readiness } from './admin/readiness.js'
import { statusOf } from './admin/status.js'
import { isConfigError } from './config/load.js'
import { configVersion, effectiveConfig } from './config/reload.js'
import { gatesReadiness, parseAddress, type Config } from './config/schema.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { selfSigned } from './certs/generate.js'
import { systemClock } from './clock.js'
import { Breakers } from './layers/breaker.js'
import { OverloadGates } from './layers/overload.js'
import { Listener, type ListenerTlsOptions } from './server/listener.js'
import { TlsMaterialError, TlsReloader, checkTlsMaterial, loadTlsMaterial, type TlsFiles, type TlsMaterial } from './server/tls.js'
import { buildStack } from './stack.js'
import { Upstreams } from './upstream/client.js'
import { HealthChecker, type BackendHealth } from './upstream/health.js'
import { watchFiles } from './watch.js'

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
  /**
   * Reads the config file again; a valid one is swapped in at once (requests already in flight
   * finish on the config they started with), an invalid one changes nothing. Reloads run one at
   * a time, in order.
   */
  reload(reason: string): Promise<ReloadResult>
  /**
   * The drain protocol: readiness fails at once; for `delayMs` requests are still served (with
   * Connection: close / GOAWAY); then the listener closes and in-flight requests get until
   * drain.timeoutMs (counted from the start) before they are cut. Resolves with the number cut.
   * Called again, it returns the drain already under way.
   */
  close(reason?: string, delayMs?: number): Promise<number>
}

export interface ReloadResult {
  result: 'success' | 'failure' | 'unchanged'
  /** The version in force afterwards. */
  version: string
  problems?: readonly string[]
  /** Changed settings that take effect only at the next start. */
  pendingRestart?: readonly string[]
}

export interface AppDeps {
  logger: Logger
  /** Asked for by the admin port (POST /drain, POST /quitquitquit); the caller drains and exits. */
  requestStop?: (reason: string, immediate: boolean) => void
  /** The config file, watched for changes, and how to read it again (with the command line's
   *  overrides applied). Without it the config is fixed for the life of the process. */
  configFile?: { path: string; load: () => Promise<Config> }
}

const gatingBackends = (config: Config) => new Set(config.backends.filter(gatesReadiness).map((b) => b.name))

export async function startApp(initial: Config, deps: AppDeps): Promise<App> {
  const { logger } = deps
  const metrics = createMetrics()
  const readiness = new Readiness((ready, holding) =>
    ready ? logger.info('ready: every readiness latch released') : logger.info({ holding }, 'not ready'),
  )
  readiness.hold('listener', 'the listener is not bound yet')
  // The config in force; replaced whole by a reload.
  let current = { config: initial, version: configVersion(initial), loadedAt: new Date(), pendingRestart: [] as string[] }
  let gating = gatingBackends(initial)

  const tls = await prepareTls(initial.listener, { logger, metrics })
  // What outlives a reload: pools, breakers, health verdicts, in-flight counts.
  const upstreams = new Upstreams(initial.backends, initial.limits)
  const breakers = new Breakers(
    initial.backends.map((b) => b.name),
    initial.circuitBreaker,
    { logger, metrics },
  )
  const gates = new OverloadGates()
  const health = new HealthChecker(initial.backends, {
    clock: systemClock,
    logger,
    metrics,
    probe: (backend, path, timeoutMs) => upstreams.probe(backend, path, timeoutMs),
    onCheck: (backend, h, changed) => {
      if (gating.has(backend)) gateReadiness(backend)
      // Back from down (a restart, a deploy): its breaker, opened while it was gone, would
      // otherwise refuse it for up to resetTimeoutMs more (Envoy un-ejects on the same event).
      if (changed && h.healthy) breakers.recovered(backend)
    },
  })
  /** A gating backend's latch follows its latest verdict, with the reason. */
  const gateReadiness = (name: string) => {
    const h = health.health(name)
    if (h?.healthy) readiness.release(`backend:${name}`)
    else readiness.hold(`backend:${name}`, h && h.checks > 0 ? `unhealthy: ${h.reason}` : 'no health check has passed yet')
  }
  const backendHealth = () => Object.fromEntries(current.config.backends.map((b) => [b.name, health.health(b.name)]))
  for (const name of gating) gateReadiness(name)
  const stackDeps = {
    logger,
    metrics,
    clock: systemClock,
    upstreams,
    breakers,
    gates,
    isHealthy: health.isHealthy,
    isAvailable: (backend: string) => upstreams.has(backend) && breakers.isAvailable(backend),
  }
  // The request path in force. A request keeps the handler it started with, so a reload
  // (which replaces this binding) never touches a request already under way.
  let handler = buildStack(initial, stackDeps)
  const listen = parseAddress(initial.listener.address)!
  const listener = new Listener({ ...listen, ...initial.listener, ...initial.limits, tls: tls.options }, (req, ctx) => handler(req, ctx), {
    logger,
    metrics,
  })
  const reloader =
    tls.files && tls.options
      ? new TlsReloader(tls.files, tls.options.material, { logger, metrics, apply: (m) => listener.setCertificate(m) })
      : undefined
  const certificate = () => reloader?.material ?? (tls.options ? tls.options.material : undefined)
  const status = () =>
    statusOf({
      ...current,
      holding: readiness.holding(),
      health: (b) => health.health(b),
      breaker: (b) => breakers.state(b),
      inFlight: (b) => gates.inFlight(b),
      recent: metrics.recent,
      certificate: certificate(),
    })

  /** Whether the last reload failed: the next good read says so even when nothing changed. */
  let lastReloadFailed = false
  /** Swaps in a validated config: pools, breakers and health checks first, then the handler. */
  const apply = (loaded: Config, reason: string): ReloadResult => {
    const fixed = lastReloadFailed
    lastReloadFailed = false
    const { config, pendingRestart } = effectiveConfig(current.config, loaded)
    const version = configVersion(config)
    if (pendingRestart.length > 0) {
      logger.warn({ pendingRestart }, 'config changes settings that take effect only at restart; the running values stay')
    }
    if (version === current.version) {
      // a touch of the file is routine; a SIGHUP that changes nothing, or a broken file put
      // back as it was, deserves an answer
      if (fixed) logger.info({ reason, version }, 'config file valid again: the config in force is unchanged')
      else logger[reason === 'file changed' ? 'debug' : 'info']({ reason, version }, 'config read again: nothing changed')
      return { result: 'unchanged', version, pendingRestart }
    }
    upstreams.sync(config.backends, config.limits)
    breakers.sync(
      config.backends.map((b) => b.name),
      config.circuitBreaker,
    )
    health.sync(config.backends)
    handler = buildStack(config, stackDeps)
    const was = gating
    gating = gatingBackends(config)
    for (const name of was) if (!gating.has(name)) readiness.release(`backend:${name}`)
    for (const name of gating) gateReadiness(name)
    logger.level = config.log.level
    const previous = current.version
    current = { config, version, loadedAt: new Date(), pendingRestart }
    metrics.configReloads.labels('config', 'success').inc()
    logger.info({ reason, version, previous, backends: config.backends.map((b) => ({ name: b.name, url: b.url, weight: b.weight })) }, 'config reloaded')
    return { result: 'success', version, pendingRestart }
  }

  let closing: Promise<number> | undefined
  let reloading: Promise<ReloadResult> = Promise.resolve({ result: 'unchanged', version: current.version })
  const reload = (reason: string): Promise<ReloadResult> => {
    const file = deps.configFile
    reloading = reloading.then(async () => {
      if (!file) {
        logger.warn({ reason }, 'no config file to reload: the proxy runs on defaults and flags')
        return { result: 'unchanged', version: current.version }
      }
      if (closing) return { result: 'unchanged', version: current.version } // draining: pools are closing
      let loaded: Config
      try {
        loaded = await file.load()
      } catch (err) {
        const problems = isConfigError(err) ? err.problems : [(err as Error).message]
        lastReloadFailed = true
        metrics.configReloads.labels('config', 'failure').inc()
        logger.error({ reason, file: file.path, problems, version: current.version }, 'config reload failed; the last good config stays in force')
        return { result: 'failure', version: current.version, problems }
      }
      return apply(loaded, reason)
    })
    return reloading
  }
  const unwatch = deps.configFile && watchFiles([deps.configFile.path], () => void reload('file changed'), { logger, debounceMs: 250 })

  const admin = new AdminServer(parseAddress(initial.admin.address)!, {
    readiness,
    registry: metrics.registry,
    logger,
    backends: () => backendHealth(),
    config: () => ({ version: current.version, loadedAt: current.loadedAt.toISOString(), pendingRestart: current.pendingRestart, config: current.config }),
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
    unwatch?.()
    await Promise.all([admin.close(), upstreams.close()])
    breakers.shutdown()
    throw err
  }
  reloader?.start()
  health.start()
  readiness.release('listener')
  logger.info(
    {
      listener: `${listener.protocol}://${formatAddress(listenerAddress)}`,
      admin: `http://${formatAddress(adminAddress)}`,
      backends: initial.backends.map((b) => ({ name: b.name, url: b.url, weight: b.weight })),
      version: current.version,
    },
    'sidecar-proxy started',
  )

  return {
    listenerAddress,
    adminAddress,
    metrics,
    readiness,
    backends: backendHealth,
    config: () => ({ config: current.config, version: current.version }),
    status,
    reload,
    close(reason = 'stop', delayMs = 0) {
      closing ??= (async () => {
        const started = Date.now()
        const { timeoutMs } = current.config.drain
        readiness.hold('draining', `draining since ${new Date(started).toISOString()} (${reason})`)
        metrics.draining.set(1)
        logger.info({ reason, delayMs, timeoutMs }, 'draining: readiness fails, requests still served')
        listener.drain()
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs))
        logger.info({ inFlight: listener.inFlightCount }, 'draining: listener closed, finishing in-flight requests')
        unwatch?.()
        reloader?.close()
        health.stop()
        const cut = await listener.close(Math.max(0, timeoutMs - (Date.now() - started)))
        await Promise.all([admin.close(), upstreams.close()])
        breakers.shutdown()
        logger.info({ cut, tookMs: Date.now() - started }, 'sidecar-proxy stopped')
        return cut
      })()
      return closing
    },
  }
}

/**
 * The listener's TLS setup: certificate files (checked now, reloaded on change), or an ephemeral
 * self-signed certificate made in memory when none is configured, or none with `tls: false`.
 * A certificate that cannot be used is a TlsMaterialError naming the file.
 */
async function prepareTls(
  listener: Config['listener'],
  deps: { logger: Logger; metrics: Metrics },
): Promise<{ options: ListenerTlsOptions | false; files?: TlsFiles }> {
  const tls = listener.tls
  if (tls === false) return { options: false }
  let material: TlsMaterial
  let files: TlsFiles | undefined
  if (tls.certFile !== undefined && tls.keyFile !== undefined) {
    files = { certFile: tls.certFile, keyFile: tls.keyFile }
    material = await loadTlsMaterial(files)
  } else {
    const hosts = ['localhost', '127.0.0.1', '::1', hostname()]
    const pem = selfSigned({ commonName: 'sidecar-proxy ephemeral', hosts, days: 365 })
    material = checkTlsMaterial(pem.cert, pem.key)
    deps.logger.warn(
      { subject: material.subject, hosts },
      'no certificate configured (listener.tls.certFile/keyFile): serving an ephemeral self-signed certificate made in memory; clients cannot verify it',
    )
  }
  deps.metrics.certExpiry.set(material.notAfter.getTime() / 1000)
  let clientCa: string | undefined
  if (tls.clientCaFile !== undefined) {
    try {
      clientCa = await readFile(tls.clientCaFile, 'utf8')
    } catch (err) {
      throw new TlsMaterialError(`cannot read the client CA bundle ${tls.clientCaFile}: ${(err as Error).message}`)
    }
  }
  return {
    options: { ...tls, material, http2: listener.http2, clientCa },
    ...(files && { files }),
  }
}

function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}
