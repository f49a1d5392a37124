// Wiring only: builds the upstream pools, the pipeline, the listener and the admin server from
// one Config, and takes them down in order.
import type { AddressInfo } from 'node:net'
import { AdminServer } from './admin/server.js'
import { Readiness } from './admin/readiness.js'
import { parseAddress, type Config } from './config/schema.js'
import type { Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { Listener } from './server/listener.js'
import { buildStack } from './stack.js'
import { Upstreams } from './upstream/client.js'

export interface App {
  readonly listenerAddress: AddressInfo
  readonly adminAddress: AddressInfo
  readonly metrics: Metrics
  readonly readiness: Readiness
  /** Graceful stop; resolves with the number of in-flight requests that had to be cut. */
  close(): Promise<number>
}

export async function startApp(config: Config, deps: { logger: Logger }): Promise<App> {
  const { logger } = deps
  const metrics = createMetrics()
  const readiness = new Readiness()
  readiness.hold('listener', 'the listener is not bound yet')

  const upstreams = new Upstreams(config.backends, config.limits)
  const handler = buildStack(config, { logger, metrics, upstreams })
  const listen = parseAddress(config.listener.address)!
  const listener = new Listener({ ...listen, ...config.listener, ...config.limits }, handler, { logger, metrics })
  const admin = new AdminServer(parseAddress(config.admin.address)!, {
    readiness,
    registry: metrics.registry,
    logger,
    probes: config.backends
      .filter((b) => b.weight > 0)
      .map((b) => ({ backend: b.name, probe: () => upstreams.probe(b.name, b.healthCheck.path, b.healthCheck.timeoutMs) })),
  })

  // Admin first: the startupProbe can then see the proxy come up.
  let adminAddress: AddressInfo
  let listenerAddress: AddressInfo
  try {
    adminAddress = await admin.listen()
    listenerAddress = await listener.listen()
  } catch (err) {
    await Promise.all([admin.close(), upstreams.close()])
    throw err
  }
  readiness.release('listener')
  logger.info(
    {
      listener: `http://${formatAddress(listenerAddress)}`,
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
    close() {
      closing ??= (async () => {
        readiness.hold('stopping', 'the proxy is shutting down')
        const cut = await listener.close(config.drain.timeoutMs)
        await Promise.all([admin.close(), upstreams.close()])
        logger.info({ cut }, 'sidecar-proxy stopped')
        return cut
      })()
      return closing
    },
  }
}

export function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}
