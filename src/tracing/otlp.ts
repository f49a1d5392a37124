// The export boundary, the only module that imports @opentelemetry/*, loaded by import() only
// when tracing is configured (tracing/tracer.ts). The proxy makes its own span records on the
// request path (tracing/context.ts); here finished batches become the SDK's ReadableSpan shape
// and go to OpenTelemetry's OTLP/HTTP exporter (protobuf or JSON serialisers of
// @opentelemetry/otlp-transformer, the HTTP transport and its retries of
// @opentelemetry/otlp-exporter-base). A failed export becomes a rejection with the reason in words.
import { OTLPExporterBase } from '@opentelemetry/otlp-exporter-base'
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http'
import { JsonTraceSerializer, ProtobufTraceSerializer, TraceExporterMetricsHelper } from '@opentelemetry/otlp-transformer'
import type { SpanRecord } from './context.js'

/** The SDK's ReadableSpan, as the serialisers take it (named here through them, so that no SDK
 *  package is imported for a type). */
type ReadableSpan = Parameters<typeof ProtobufTraceSerializer.serializeRequest>[0][number]

export interface OtlpOptions {
  endpoint: string
  protocol: 'http/protobuf' | 'http/json'
  headers: Readonly<Record<string, string>>
  timeoutMs: number
  serviceName: string
  /** The proxy's version, as the instrumentation scope's. */
  version: string
}

export interface OtlpExport {
  send(spans: SpanRecord[]): Promise<void>
  shutdown(): Promise<void>
}

export function createOtlpExport(o: OtlpOptions): OtlpExport {
  const json = o.protocol === 'http/json'
  const exporter = new OTLPExporterBase<ReadableSpan[]>(
    createOtlpHttpExportDelegate(
      convertLegacyHttpOptions(
        // one export at a time is what the queue sends; a second would wait behind the first
        { url: o.endpoint, headers: { ...o.headers }, timeoutMillis: o.timeoutMs, concurrencyLimit: 2 },
        'TRACES',
        'v1/traces',
        { 'Content-Type': json ? 'application/json' : 'application/x-protobuf' },
      ),
      json ? JsonTraceSerializer : ProtobufTraceSerializer,
      'otlp_http_span_exporter',
      TraceExporterMetricsHelper,
      undefined,
    ),
  )
  const resource = { attributes: { 'service.name': o.serviceName, 'telemetry.sdk.language': 'nodejs' } } as unknown as ReadableSpan['resource']
  const scope = { name: 'sidecar-proxy', version: o.version }
  // hrtime -> wall clock, fixed once: spans keep the monotonic clock's durations
  const wallNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint()
  const hr = (t: bigint): [number, number] => {
    const ns = wallNs + t
    return [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)]
  }
  const toReadable = (s: SpanRecord): ReadableSpan => {
    const traceState = s.traceState === undefined ? undefined : { serialize: () => s.traceState! }
    const context = { traceId: s.traceId, spanId: s.spanId, traceFlags: 1, traceState }
    return {
      name: s.name,
      kind: s.kind,
      spanContext: () => context,
      parentSpanContext: s.parentSpanId === undefined ? undefined : { traceId: s.traceId, spanId: s.parentSpanId, traceFlags: 1, isRemote: s.parentRemote },
      startTime: hr(s.start),
      endTime: hr(s.end),
      duration: [Number((s.end - s.start) / 1_000_000_000n), Number((s.end - s.start) % 1_000_000_000n)],
      status: { code: s.error ? 2 : 0 },
      attributes: s.attributes,
      links: [],
      events: [],
      ended: true,
      resource,
      instrumentationScope: scope,
      droppedAttributesCount: 0,
      droppedEventsCount: 0,
      droppedLinksCount: 0,
    } as unknown as ReadableSpan
  }
  return {
    send: (spans) =>
      new Promise((resolve, reject) => {
        exporter.export(spans.map(toReadable), (result) => {
          if (result.code === 0) resolve()
          else reject(new Error(`OTLP export to ${o.endpoint} failed: ${result.error?.message ?? 'unknown error'}`))
        })
      }),
    shutdown: () => exporter.shutdown(),
  }
}
