// Tracing's start and stop: the export queue and, through import(), the OTLP boundary. Called by
// app.ts only when the config has a `tracing` section: with none, nothing of this runs and no
// @opentelemetry package is loaded.
import { readFileSync } from 'node:fs'
import type { Clock } from '../clock.js'
import type { Config } from '../config/schema.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { Ids } from './context.js'
import { SpanQueue } from './queue.js'

export type TracingConfig = NonNullable<Config['tracing']>

export interface Tracing {
  /** Where the layers put finished sampled spans. */
  readonly sink: SpanQueue
  readonly ids: Ids
  /** Exports what is queued, within `timeoutMs` (the drain's time left). */
  flush(timeoutMs: number): Promise<void>
  /** Flushes within `timeoutMs`, then closes the exporter's connections. */
  close(timeoutMs: number): Promise<void>
  /** For /status. */
  status(): TracingStatus
}

export interface TracingStatus {
  endpoint: string
  protocol: string
  sampleRatio: number
  serviceName: string
  queued: number
  exported: number
  dropped: number
  failedExports: number
}

export interface TracingDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
}

export async function startTracing(config: TracingConfig, deps: TracingDeps): Promise<Tracing> {
  const { createOtlpExport } = await import('./otlp.js')
  const { otlp } = config
  const exporter = createOtlpExport({ ...otlp, serviceName: config.serviceName, version: packageVersion() })
  const sink = new SpanQueue(config.batch, {
    clock: deps.clock,
    send: (spans) => exporter.send(spans),
    dropped: (reason, n) => deps.metrics.countSpansDropped(reason, n),
    onExportFailure: (err) => deps.logger.warn({ err: (err as Error).message, endpoint: otlp.endpoint }, 'tracing: spans could not be exported (dropped, counted in sidecar_spans_dropped_total)'),
    onExportRecovered: () => deps.logger.info({ endpoint: otlp.endpoint }, 'tracing: spans are exported again'),
  })
  // both reasons at 0 from the start, for dashboards
  deps.metrics.countSpansDropped('queue_full', 0)
  deps.metrics.countSpansDropped('export_failed', 0)
  deps.logger.info({ endpoint: otlp.endpoint, protocol: otlp.protocol, sampleRatio: config.sampleRatio }, 'tracing on')
  return {
    sink,
    ids: new Ids(),
    flush: (timeoutMs) => sink.flush(timeoutMs),
    async close(timeoutMs) {
      await sink.close(timeoutMs)
      // not awaited: the exporter's shutdown waits for an export still in flight, and a
      // collector that never answers must not hold the exit past drain.timeoutMs
      void exporter.shutdown().catch(() => {})
    },
    status: () => ({
      endpoint: otlp.endpoint,
      protocol: otlp.protocol,
      sampleRatio: config.sampleRatio,
      serviceName: config.serviceName,
      queued: sink.queued,
      ...sink.totals,
    }),
  }
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}
