// Header rules shared by both directions (RFC 9110 section 7.6.1): hop-by-hop headers belong to
// one connection and are never forwarded, and neither is any header the sender named in
// `Connection`. They are removed BEFORE the proxy adds its own headers, so a client sending
// `Connection: close, x-forwarded-for` cannot make the proxy drop the X-Forwarded-For it sets.
import { randomFillSync } from 'node:crypto'
import type { HeaderMap } from './pipeline/types.js'

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  // TE is hop-by-hop, but `te: trailers` is passed on (below): it says the client takes
  // trailers, which gRPC needs. `Trailer` (the names of the trailers to come) is end-to-end.
  'te',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  // Not hop-by-hop by the RFC, but answered by the listener itself (100 Continue) and rejected
  // by undici if forwarded: the expectation is between the client and the proxy.
  'expect',
  // HTTP/2 only, never valid on an HTTP/1.1 hop.
  'http2-settings',
])

/** A copy of `headers` without hop-by-hop headers, without the headers named in Connection and
 *  without the ones in `drop`; with `underscores`, names holding `_` are left out too and listed
 *  there. (Built by leaving names out, never by `delete`: a deleted key turns the object into a
 *  slow dictionary that every later reader, undici included, pays for.) */
export function endToEnd(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  drop?: ReadonlySet<string>,
  underscores?: { dropped?: string[] },
): HeaderMap {
  const named = connectionNamed(headers.connection)
  const out: HeaderMap = {}
  for (const name in headers) {
    const value = headers[name]
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) never reach an HTTP/1.1 hop
    if (value === undefined || HOP_BY_HOP.has(name) || named?.has(name) || drop?.has(name) || name.charCodeAt(0) === 58) continue
    if (underscores !== undefined && name.includes('_')) {
      ;(underscores.dropped ??= []).push(name)
      continue
    }
    out[name] = value
  }
  return out
}

/** A raw header name, lower-cased. */
export type HeaderName = (raw: Buffer | string) => string

const lowerCased: HeaderName = (raw) => raw.toString('latin1').toLowerCase()

/** endToEnd for raw name/value pairs (undici's response headers): one pass into a HeaderMap, a
 *  second only when Connection names headers beyond the hop-by-hop set (rare). `nameOf` turns a
 *  raw name into its lower-cased string: the upstream client passes undici's, which returns the
 *  well-known names without making a string. A hop-by-hop header's value is never decoded. */
export function endToEndRaw(raw: ReadonlyArray<Buffer | string> | null, nameOf: HeaderName = lowerCased): HeaderMap {
  const headers: HeaderMap = {}
  if (raw === null) return headers
  let connection: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = nameOf(raw[i]!)
    if (HOP_BY_HOP.has(name) || name.charCodeAt(0) === 58) {
      if (name === 'connection') {
        const value = raw[i + 1]!.toString('latin1')
        connection = connection === undefined ? value : `${connection}, ${value}`
      }
      continue
    }
    const value = raw[i + 1]!.toString('latin1')
    const had = headers[name]
    headers[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value]
  }
  const named = connectionNamed(connection?.toLowerCase())
  return named === null ? headers : endToEnd(headers, named)
}

function connectionNamed(value: string | string[] | undefined): Set<string> | null {
  // the common values name nothing beyond the hop-by-hop set: skip the parse on the hot path
  if (value === undefined || value === 'keep-alive' || value === 'close') return null
  const set = new Set<string>()
  for (const part of (Array.isArray(value) ? value.join(',') : value).split(',')) {
    const token = part.trim().toLowerCase()
    if (token) set.add(token)
  }
  return set
}

export interface ForwardingInfo {
  clientAddress: string
  protocol: 'http' | 'https'
  trustForwardedHeaders: boolean
  headersWithUnderscores: 'drop' | 'allow'
  /** Filled in: the names of the headers dropped for their underscore. */
  dropped?: string[]
  /** mTLS: the header that carries the verified client subject. A client-sent header of that
   *  name is always dropped; it is set only when the handshake verified a certificate. */
  clientSubjectHeader?: string
  clientSubject?: string | undefined
}

/** What a client could set to pass for another address, scheme or host. */
const FORWARDED: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'forwarded'])

/** A caller's request for a fault (fault.headerControl, layers/fault.ts): for the proxy alone,
 *  never passed to the app, whether or not fault injection is on. */
export const FAULT_DELAY_HEADER = 'x-sidecar-fault-delay-ms'
export const FAULT_ABORT_HEADER = 'x-sidecar-fault-abort'
const FAULT: ReadonlySet<string> = new Set([FAULT_DELAY_HEADER, FAULT_ABORT_HEADER])
const FORWARDED_AND_FAULT: ReadonlySet<string> = new Set([...FORWARDED, ...FAULT])

/**
 * The headers the app receives: end-to-end headers, then the proxy's own. Client-sent
 * X-Forwarded-*, X-Real-IP and `Forwarded` are dropped unless `trustForwardedHeaders`; when trusted, the
 * client address is appended to the chain and the client's proto/host are kept. The fault
 * control headers are always dropped (the listener hands their values to the pipeline apart).
 */
export function upstreamRequestHeaders(
  incoming: Readonly<Record<string, string | string[] | undefined>>,
  requestId: string,
  info: ForwardingInfo,
): HeaderMap {
  const trusted = info.trustForwardedHeaders
  const subject = info.clientSubjectHeader
  const drop = subject === undefined ? (trusted ? FAULT : FORWARDED_AND_FAULT) : new Set([subject, ...FAULT, ...(trusted ? [] : FORWARDED)])
  const headers = endToEnd(incoming, drop, info.headersWithUnderscores === 'drop' ? info : undefined)
  // HTTP/2 carries the host in :authority; the app, on HTTP/1.1, needs Host
  if (headers.host === undefined && typeof incoming[':authority'] === 'string') headers.host = incoming[':authority']
  if (subject !== undefined && info.clientSubject !== undefined) headers[subject] = info.clientSubject
  const priorFor = trusted ? single(headers['x-forwarded-for']) : undefined
  headers['x-forwarded-for'] = priorFor ? `${priorFor}, ${info.clientAddress}` : info.clientAddress
  headers['x-forwarded-proto'] ??= info.protocol
  const host = single(headers.host)
  if (host !== undefined) headers['x-forwarded-host'] ??= host
  headers['x-request-id'] = requestId
  if (acceptsTrailers(incoming.te)) headers.te = 'trailers'
  return headers
}

/** Whether a TE header names `trailers` (an HTTP/1.1 client that will take response trailers). */
export function acceptsTrailers(te: string | string[] | undefined): boolean {
  if (te === undefined) return false
  return (Array.isArray(te) ? te.join(',') : te).split(',').some((t) => t.trim().toLowerCase() === 'trailers')
}

/** The client's x-request-id when it is a sane token (1-128 visible ASCII chars), else a new one. */
export function requestIdFrom(value: string | string[] | undefined): string {
  const v = single(value)
  return v !== undefined && /^[\x21-\x7e]{1,128}$/.test(v) ? v : newRequestId()
}

const IDS_PER_FILL = 128
const random = Buffer.alloc(16 * IDS_PER_FILL)
let nextId = IDS_PER_FILL
const idText = Buffer.alloc(36)
const HEX = Buffer.from('0123456789abcdef')

/**
 * A new request id: a random (version 4) UUID, as crypto.randomUUID makes, from random bytes
 * drawn 128 ids at a time. Written into a buffer and read out as one flat string: randomUUID's
 * string is a tree of twenty joined pieces (some 480 bytes), kept as such for as long as the
 * request is in flight and its line is unwritten; this one is 36 characters in one piece.
 */
export function newRequestId(): string {
  if (nextId === IDS_PER_FILL) {
    randomFillSync(random)
    nextId = 0
  }
  const r = nextId++ * 16
  let o = 0
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) idText[o++] = 0x2d // -
    let b = random[r + i]!
    if (i === 6) b = (b & 0x0f) | 0x40 // version 4
    else if (i === 8) b = (b & 0x3f) | 0x80 // the RFC 9562 variant
    idText[o++] = HEX[b >> 4]!
    idText[o++] = HEX[b & 15]!
  }
  return idText.toString('latin1', 0, 36)
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v
}
