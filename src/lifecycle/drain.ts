// The drain protocol, what a Kubernetes pod stop needs (the sidecar drains after its app):
//   1. readiness fails at once (the endpoint leaves the Service's load balancers);
//   2. for `delayMs` requests are still served, told to go elsewhere (HTTP/1.1 Connection: close,
//      HTTP/2 GOAWAY), since load balancers take a moment to notice;
//   3. the listener closes; in-flight requests get until `timeoutMs` (counted from the start),
//      then are cut;
//   4. what serves the proxy itself (admin port, upstream pools) closes last.
import type { Readiness } from '../admin/readiness.js'
import type { Clock } from '../clock.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'

export interface Drainable {
  listener: {
    drain(): void
    /** Resolves with the number of requests cut. */
    close(timeoutMs: number): Promise<number>
    readonly inFlightCount: number
  }
  /** Stops what works in the background (file watches, health checks) once the listener closes. */
  stopBackground(): void
  /** Closes what is left after the last request (the admin port, upstream pools). */
  closeRest(): Promise<void>
  /** After the last request, before closeRest: sends what is queued for export (finished
   *  spans), given what is left of timeoutMs. */
  flush?: ((timeoutMs: number) => Promise<void>) | undefined
}

export interface DrainDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  readiness: Readiness
}

/** Drains and stops; resolves with the number of requests cut. */
export async function drainAndStop(
  target: Drainable,
  o: { reason: string; delayMs: number; timeoutMs: number },
  deps: DrainDeps,
): Promise<number> {
  const { clock, logger } = deps
  const started = clock.now()
  deps.readiness.hold('draining', `draining since ${new Date().toISOString()} (${o.reason})`)
  deps.metrics.setDraining(true)
  logger.info({ reason: o.reason, delayMs: o.delayMs, timeoutMs: o.timeoutMs }, 'draining: readiness fails, requests still served')
  target.listener.drain()
  if (o.delayMs > 0) await clock.sleep(o.delayMs)
  logger.info({ inFlight: target.listener.inFlightCount }, 'draining: listener closed, finishing in-flight requests')
  target.stopBackground()
  const cut = await target.listener.close(Math.max(0, o.timeoutMs - (clock.now() - started)))
  if (target.flush) await target.flush(Math.max(0, o.timeoutMs - (clock.now() - started)))
  await target.closeRest()
  logger.info({ cut, tookMs: clock.now() - started }, 'sidecar-proxy stopped')
  return cut
}
