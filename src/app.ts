// Wiring only: builds the upstream pools, the pipeline, the listener and the admin server from
// one Config, and takes them down in order.
import { readFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import { AdminServer } from './admin/server.js'
import { Readiness } from './admin/readiness.js'
import { parseAddress, type Config } from './config/schema.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { selfSigned } from './certs/generate.js'
import { systemClock } from './clock.js'
import { Breakers } from './layers/breaker.js'
import { Listener, type ListenerTlsOptions } from './server/listener.js'
import { TlsMaterialError, TlsReloader, checkTlsMaterial, loadTlsMaterial, type TlsFiles, type TlsMaterial } from './server/tls.js'
import { buildStack } from './stack.js'
import { Upstreams } from './upstream/client.js'
import { HealthChecker, type BackendHealth } from './upstream/health.js'

export interface App {
  readonly listenerAddress: AddressInfo
  readonly adminAddress: AddressInfo
  readonly metrics: Metrics
  readonly readiness: Readiness
  /** Each backend's health-check verdict. */
  backends(): Record<string, BackendHealth | undefined>
  /**
   * The drain protocol: readiness fails at once; for `delayMs` requests are still served (with
   * Connection: close / GOAWAY); then the listener closes and in-flight requests get until
   * drain.timeoutMs (counted from the start) before they are cut. Resolves with the number cut.
   * Called again, it returns the drain already under way.
   */
  close(reason?: string, delayMs?: number): Promise<number>
}

export interface AppDeps {
  logger: Logger
  /** Asked for by the admin port (POST /drain, POST /quitquitquit); the caller drains and exits. */
  requestStop?: (reason: string, immediate: boolean) => void
}

export async function startApp(config: Config, deps: AppDeps): Promise<App> {
  const { logger } = deps
  const metrics = createMetrics()
  const readiness = new Readiness((ready, holding) =>
    ready ? logger.info('ready: every readiness latch released') : logger.info({ holding }, 'not ready'),
  )
  readiness.hold('listener', 'the listener is not bound yet')

  const tls = await prepareTls(config.listener, { logger, metrics })
  const upstreams = new Upstreams(config.backends, config.limits)
  const breakers = new Breakers(
    config.backends.map((b) => b.name),
    config.circuitBreaker,
    { logger, metrics },
  )
  const health = new HealthChecker(config.backends, {
    clock: systemClock,
    logger,
    metrics,
    probe: (backend, path, timeoutMs) => upstreams.probe(backend, path, timeoutMs),
    onCheck: (backend, h) => {
      if (!gating.has(backend)) return
      if (h.healthy) readiness.release(`backend:${backend}`)
      else readiness.hold(`backend:${backend}`, `unhealthy: ${h.reason}`)
    },
  })
  // Only backends that get traffic gate readiness; a canary at weight 0 may be down.
  const backendHealth = () => Object.fromEntries(config.backends.map((b) => [b.name, health.health(b.name)]))
  const gating = new Set(config.backends.filter((b) => b.weight > 0).map((b) => b.name))
  for (const name of gating) readiness.hold(`backend:${name}`, 'no health check has passed yet')
  const handler = buildStack(config, { logger, metrics, clock: systemClock, upstreams, breakers, isHealthy: health.isHealthy })
  const listen = parseAddress(config.listener.address)!
  const listener = new Listener({ ...listen, ...config.listener, ...config.limits, tls: tls.options }, handler, { logger, metrics })
  const reloader =
    tls.files && tls.options
      ? new TlsReloader(tls.files, tls.options.material, { logger, metrics, apply: (m) => listener.setCertificate(m) })
      : undefined
  const admin = new AdminServer(parseAddress(config.admin.address)!, {
    readiness,
    registry: metrics.registry,
    logger,
    backends: () => backendHealth(),
    requestStop: deps.requestStop ?? (() => {}),
  })

  // Admin first: the startupProbe can then see the proxy come up.
  let adminAddress: AddressInfo
  let listenerAddress: AddressInfo
  try {
    adminAddress = await admin.listen()
    listenerAddress = await listener.listen()
  } catch (err) {
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
      backends: config.backends.map((b) => ({ name: b.name, url: b.url, weight: b.weight })),
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
    close(reason = 'stop', delayMs = 0) {
      closing ??= (async () => {
        const started = Date.now()
        readiness.hold('draining', `draining since ${new Date(started).toISOString()} (${reason})`)
        logger.info({ reason, delayMs, timeoutMs: config.drain.timeoutMs }, 'draining: readiness fails, requests still served')
        listener.drain()
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs))
        logger.info({ inFlight: listener.inFlightCount }, 'draining: listener closed, finishing in-flight requests')
        reloader?.close()
        health.stop()
        const cut = await listener.close(Math.max(0, config.drain.timeoutMs - (Date.now() - started)))
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
