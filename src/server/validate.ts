// The listener's checks of a request's head, before the pipeline: pure functions of what the
// client sent (no sockets), so they can be tested as tables. What Node's parser refuses itself
// arrives as a parser error and is named by `parserErrorCode`.
import { METHODS } from 'node:http'
import type { ErrorCode } from '../errors.js'

export interface Refusal {
  code: ErrorCode
  detail: string
}

/** A Transfer-Encoding value (the last header's, when repeated) whose last coding is chunked. */
const LAST_CODING_CHUNKED = /(?:^|,)[ \t]*chunked[ \t]*$/i

/** host [":" port], host a DNS name, IPv4 or [IPv6] literal: no userinfo, path, spaces or controls. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d{1,5})?$/

/**
 * What Node's HTTP/1 parser lets through but RFC 9112 says a server must refuse (3.2: exactly
 * one valid Host on HTTP/1.1; 2.3: versions it does not speak; 6.3: a Transfer-Encoding whose
 * last coding is not chunked, such as `xchunked`, whose body length nothing can tell; Node's
 * parser says so only after it has handed the request over), and the request-target forms a
 * reverse proxy does not forward (authority-form is CONNECT's, asterisk-form `OPTIONS *` asks
 * about the proxy, not the app). Returns the refusal, or the origin-form target to forward
 * (absolute-form `http://host/p` becomes `/p` when its authority is the Host; else null: as is).
 */
export function checkHttp1Request(req: { httpVersion: string; rawHeaders: readonly string[]; url?: string | undefined }): Refusal | string | null {
  const version = req.httpVersion
  if (version !== '1.1' && version !== '1.0') return { code: 'http_version_not_supported', detail: `HTTP/${version}` }
  let host: string | undefined
  let hosts = 0
  let codings: string | undefined
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length === 4 && name.toLowerCase() === 'host') {
      hosts++
      host = raw[i + 1]
    } else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') codings = raw[i + 1]
  }
  if (codings !== undefined && !LAST_CODING_CHUNKED.test(codings)) return { code: 'bad_request', detail: `Transfer-Encoding: ${codings.slice(0, 100)} (chunked is not its last coding)` }
  if (hosts > 1) return { code: 'bad_request', detail: `${hosts} Host headers` }
  if (hosts === 0 && version === '1.1') return { code: 'bad_request', detail: 'no Host header' }
  if (host !== undefined && !AUTHORITY.test(host)) return { code: 'bad_request', detail: `invalid Host ${JSON.stringify(host.slice(0, 100))}` }
  const target = req.url ?? ''
  if (target.charCodeAt(0) === 47 /* / */) return null
  const absolute = /^https?:\/\/([^/?#]*)([^#]*)/i.exec(target)
  if (!absolute) return { code: 'bad_request', detail: 'request-target is neither a path nor an absolute URL (OPTIONS * included)' }
  if (host === undefined || absolute[1]!.toLowerCase() !== host.toLowerCase()) {
    return { code: 'bad_request', detail: 'absolute-form request-target names another authority than Host' }
  }
  const rest = absolute[2]!
  return rest.startsWith('/') ? rest : `/${rest}`
}

/** The methods Node's HTTP/1 parser takes (upper case): what an HTTP/1 listener can receive. */
const HTTP1_METHODS: ReadonlySet<string> = new Set(METHODS)

/**
 * The same rules for HTTP/2, where nghttp2 already refuses a missing or non-slash :path (but not
 * `*`) and connection-specific headers: one valid authority (RFC 9113 8.3.1: a Host beside
 * :authority must name the same one), no asterisk-form, and only the methods HTTP/1 clients can
 * send (a `get` would reach the app, whose HTTP/1 parser refuses it).
 */
export function checkHttp2Request(req: { method: string; headers: Readonly<Record<string, string | string[] | undefined>> }): Refusal | null {
  if (req.method === 'CONNECT') return CONNECT_REFUSED
  if (!HTTP1_METHODS.has(req.method)) return { code: 'bad_request', detail: `method ${JSON.stringify(req.method.slice(0, 20))}` }
  const authority = single(req.headers[':authority'])
  const host = single(req.headers.host)
  const named = authority ?? host
  if (named === undefined) return { code: 'bad_request', detail: 'neither :authority nor Host' }
  if (!AUTHORITY.test(named)) return { code: 'bad_request', detail: `invalid authority ${JSON.stringify(named.slice(0, 100))}` }
  if (authority !== undefined && host !== undefined && authority.toLowerCase() !== host.toLowerCase()) {
    return { code: 'bad_request', detail: 'Host names another authority than :authority' }
  }
  if (single(req.headers[':path'])?.charCodeAt(0) !== 47 /* / */) return { code: 'bad_request', detail: ':path is not a path (OPTIONS * included)' }
  return null
}

/**
 * An HTTP/1.1 Upgrade the proxy will not tunnel: `h2c` (a tunnel to the app speaking HTTP/2
 * would carry requests past every check of the proxy: h2c smuggling; HTTP/2 with prior
 * knowledge is served instead), and an upgrade request carrying a body (after the switch its
 * bytes would be the new protocol's).
 */
export function checkUpgradeRequest(protocol: string, headers: Readonly<Record<string, string | string[] | undefined>>): Refusal | null {
  if (/^h2c$/i.test(protocol)) return { code: 'bad_request', detail: 'Upgrade: h2c is not proxied; send HTTP/2 with prior knowledge' }
  if (headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined) return { code: 'bad_request', detail: 'an upgrade request with a body' }
  return null
}

/** A CONNECT on either protocol: a reverse proxy is not a tunnel. */
export const CONNECT_REFUSED: Refusal = { code: 'method_not_allowed', detail: 'CONNECT' }

/** What Node's HTTP/1 parser refused, as a catalogue code. */
export function parserErrorCode(err: { code?: string | undefined }): ErrorCode {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 'headers_too_large'
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 'request_timeout'
    default:
      return 'bad_request'
  }
}

/** Header lines the client sent, pseudo-headers (HTTP/2's `:path` and the like) left out. */
export function countRegularHeaders(raw: readonly string[]): number {
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.charCodeAt(0) !== 58 /* ':' */) n++
  return n
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}
