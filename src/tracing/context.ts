// What tracing does per request, with no library: W3C Trace Context in and out (B3 accepted on
// the way in), ids, the sampling decision and the span records the layers make. The
// OpenTelemetry packages are reached only at the export boundary (tracing/otlp.ts), loaded when
// tracing is configured; nothing here allocates more than a few strings per request.
import { randomFillSync } from 'node:crypto'
import type { HeaderMap, RequestTrace } from '../pipeline/types.js'

/** OpenTelemetry's SpanKind values (api's enum), as the exporter reads them. */
export const SERVER = 1
export const CLIENT = 2

/** A finished span, as the layers record it: hrtime stamps, attributes by semantic-convention name. */
export interface SpanRecord {
  name: string
  kind: typeof SERVER | typeof CLIENT
  traceId: string
  spanId: string
  parentSpanId: string | undefined
  /** The parent is the caller's span (came in a header), not one of the proxy's. */
  parentRemote: boolean
  traceState: string | undefined
  /** process.hrtime.bigint() at the start and the end. */
  start: bigint
  end: bigint
  attributes: Record<string, string | number | boolean>
  /** OpenTelemetry's span status: Error (a 5xx answer, or a failed attempt). */
  error: boolean
}

/** Where finished sampled spans go: the export queue (tracing/queue.ts). Never blocks. */
export interface SpanSink {
  record(span: SpanRecord): void
}

const HEX = /^[0-9a-f]+$/
const ZEROS_32 = '00000000000000000000000000000000'
const ZEROS_16 = '0000000000000000'

/** A caller's span context, read from its headers. */
export interface Parent {
  traceId: string
  spanId: string
  sampled: boolean
  traceState: string | undefined
  /** Which headers carried it: the app is then told in the same format too. */
  via: 'w3c' | 'b3' | 'b3-multi'
}

/**
 * `traceparent` by the W3C rules: lower-case hex, version 00 exactly 55 characters, a later
 * version at least that and then `-` (its extra fields ignored), version ff never, trace and
 * span ids not all zero. Anything else (or the header sent twice) is no parent at all.
 */
export function parseTraceparent(value: string | string[] | undefined): { traceId: string; spanId: string; sampled: boolean } | null {
  if (typeof value !== 'string' || value.length < 55) return null
  const v = value.trim()
  if (v.length < 55 || v[2] !== '-' || v[35] !== '-' || v[52] !== '-') return null
  const version = v.slice(0, 2)
  if (!HEX.test(version) || version === 'ff') return null
  if (version === '00' ? v.length !== 55 : v.length > 55 && v[55] !== '-') return null
  const traceId = v.slice(3, 35)
  const spanId = v.slice(36, 52)
  const flags = v.slice(53, 55)
  if (!HEX.test(traceId) || !HEX.test(spanId) || !HEX.test(flags) || traceId === ZEROS_32 || spanId === ZEROS_16) return null
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 }
}

/** tracestate passed on only when it looks like one: at most 32 `key=value` members. */
export function validTracestate(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined
  const v = Array.isArray(value) ? value.join(',') : value
  if (v.length > 8192) return undefined
  const members = v.split(',').filter((m) => m.trim() !== '')
  if (members.length === 0 || members.length > 32) return undefined
  return members.every((m) => /^\s*[a-z0-9][_0-9a-z\-*/]{0,255}(@[a-z0-9][_0-9a-z\-*/]{0,13})?=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\s*$/.test(m))
    ? v
    : undefined
}

/** B3, single header (`b3: {trace}-{span}[-{sampled}[-{parent}]]`) or multi (`x-b3-*`). A
 *  64-bit trace id is widened to 128 bits with leading zeros. No sampling flag: not sampled
 *  here, the proxy decides (`b3: 0`/`1`/`d` alone carry no ids and are no parent). */
export function parseB3(headers: Readonly<HeaderMap>): Parent | null {
  const single = headers.b3
  if (typeof single === 'string') {
    const [traceId, spanId, flag] = single.trim().split('-')
    const ids = b3Ids(traceId, spanId)
    if (ids === null) return null
    const sampled = flag === '1' || flag === 'd'
    if (flag !== undefined && !sampled && flag !== '0') return null
    return { ...ids, sampled, traceState: undefined, via: 'b3' }
  }
  const traceId = headers['x-b3-traceid']
  const spanId = headers['x-b3-spanid']
  if (typeof traceId !== 'string' || typeof spanId !== 'string') return null
  const ids = b3Ids(traceId.trim(), spanId.trim())
  if (ids === null) return null
  const sampled = headers['x-b3-sampled'] === '1' || headers['x-b3-sampled'] === 'true' || headers['x-b3-flags'] === '1'
  return { ...ids, sampled, traceState: undefined, via: 'b3-multi' }
}

function b3Ids(traceId: string | undefined, spanId: string | undefined): { traceId: string; spanId: string } | null {
  if (traceId === undefined || spanId === undefined) return null
  if ((traceId.length !== 32 && traceId.length !== 16) || spanId.length !== 16) return null
  if (!HEX.test(traceId) || !HEX.test(spanId)) return null
  const wide = traceId.length === 16 ? ZEROS_16 + traceId : traceId
  if (wide === ZEROS_32 || spanId === ZEROS_16) return null
  return { traceId: wide, spanId }
}

/** The caller's span context: a valid traceparent (with its tracestate), else B3, else null. */
export function incomingParent(headers: Readonly<HeaderMap>): Parent | null {
  const w3c = parseTraceparent(headers.traceparent)
  if (w3c !== null) return { ...w3c, traceState: validTracestate(headers.tracestate), via: 'w3c' }
  return headers.b3 === undefined && headers['x-b3-traceid'] === undefined ? null : parseB3(headers)
}

export function traceparentOf(traceId: string, spanId: string, sampled: boolean): string {
  return `00-${traceId}-${spanId}-${sampled ? '01' : '00'}`
}

/**
 * The context the app is told for one attempt: traceparent (always), tracestate as it came (or
 * none: an invalid one, or one without a valid traceparent, is not passed on) and, for a caller
 * that spoke B3, its headers rewritten the same way so that a B3 app stays in the trace.
 */
export function propagate(headers: HeaderMap, trace: RequestTrace, spanId: string): void {
  headers.traceparent = traceparentOf(trace.traceId, spanId, trace.sampled)
  if (trace.traceState !== undefined) headers.tracestate = trace.traceState
  if (trace.via === 'b3') headers.b3 = `${trace.traceId}-${spanId}-${trace.sampled ? '1' : '0'}`
  else if (trace.via === 'b3-multi') {
    headers['x-b3-traceid'] = trace.traceId
    headers['x-b3-spanid'] = spanId
    headers['x-b3-parentspanid'] = trace.spanId
    headers['x-b3-sampled'] = trace.sampled ? '1' : '0'
  }
}

/** Random trace and span ids, cut from a pool of random bytes refilled 8 KiB at a time. */
export class Ids {
  private readonly pool = Buffer.allocUnsafe(8192)
  private at = this.pool.length

  traceId(): string {
    let id = this.take(16)
    while (id === ZEROS_32) id = this.take(16)
    return id
  }

  spanId(): string {
    let id = this.take(8)
    while (id === ZEROS_16) id = this.take(8)
    return id
  }

  private take(n: number): string {
    if (this.at + n > this.pool.length) {
      randomFillSync(this.pool)
      this.at = 0
    }
    const id = this.pool.toString('hex', this.at, this.at + n)
    this.at += n
    return id
  }
}

/** `host[:port]` or `[v6][:port]` of a Host header or URL authority. */
export function hostAndPort(authority: string | string[] | undefined): { address: string; port: number | undefined } | undefined {
  if (typeof authority !== 'string' || authority === '') return undefined
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?$/.exec(authority)
  if (!m) return undefined
  const address = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!
  return { address, port: m[2] === undefined ? undefined : Number(m[2]) }
}

/** Methods OpenTelemetry's HTTP conventions know; any other is `_OTHER`. */
export const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY'])
