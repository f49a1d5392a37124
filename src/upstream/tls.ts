// TLS to a backend (an https:// url: another pod's sidecar): what the backend is verified against
// (`caFile`, or the system's CAs), the name it must carry (`serverName`, or the URL's host), and
// the client certificate shown to a backend that asks for one (mTLS). The files are read and
// checked before a config using them is put in force, then watched like the listener's (the pool
// is rebuilt for a changed set: new connections use it, open ones keep theirs). And the one place
// that turns a failed handshake into words.
import { isIP } from 'node:net'
import { at, loadCaBundle, loadTlsMaterial, type TlsMaterial } from '../certs/material.js'
import type { Config } from '../config/schema.js'
import type { Logger } from '../log.js'

type BackendConfig = Config['backends'][number]

/** What one backend's connections are made with (undici's `connect` options). */
export interface UpstreamTls {
  /** Sent in SNI and checked against the backend's certificate. Null: the URL's host is an IP
   *  address (no SNI; the certificate must carry it as an IP SAN). */
  servername: string | null
  /** PEM CA bundle; absent: Node's built-in CAs. */
  ca?: string
  /** The client certificate, checked to match its key. */
  client?: TlsMaterial
}

/** The TLS settings of every https:// backend, read from their files and checked; TlsMaterialError
 *  names the config path and the file at fault. */
export async function loadBackendTls(backends: readonly BackendConfig[]): Promise<Map<string, UpstreamTls>> {
  const out = new Map<string, UpstreamTls>()
  await Promise.all(
    backends.map(async (b, i) => {
      if (!b.url.startsWith('https:')) return
      out.set(b.name, await loadUpstreamTls(b, `backends[${i}].tls`))
    }),
  )
  return out
}

export async function loadUpstreamTls(b: BackendConfig, path: string): Promise<UpstreamTls> {
  const { caFile, certFile, keyFile } = b.tls ?? {}
  const [ca, client] = await Promise.all([
    caFile === undefined ? undefined : at(`${path}.caFile`, loadCaBundle(caFile)),
    certFile === undefined || keyFile === undefined ? undefined : at(path, loadTlsMaterial({ certFile, keyFile })),
  ])
  return { ...namedTls(b), ...(ca !== undefined && { ca }), ...(client !== undefined && { client }) }
}

/** What an https backend's TLS is without any files: the system's CAs, no client certificate. */
export function namedTls(b: BackendConfig): UpstreamTls {
  const host = new URL(b.url).hostname
  return { servername: b.tls?.serverName ?? (isIP(host.replace(/^\[|\]$/g, '')) ? null : host) }
}

/** The files an https backend's TLS comes from (watched while it is configured). */
export function tlsFiles(b: BackendConfig): string[] {
  const { caFile, certFile, keyFile } = b.tls ?? {}
  return [caFile, certFile, keyFile].filter((f): f is string => f !== undefined)
}

/** Whether two reads hold the same material (a touch of the files changes nothing). */
export function sameTls(a: UpstreamTls, b: UpstreamTls): boolean {
  return a.servername === b.servername && a.ca === b.ca && a.client?.cert === b.client?.cert && a.client?.key === b.client?.key
}

/** undici's `connect` options for these settings. */
export function connectOptions(tls: UpstreamTls): Record<string, unknown> {
  return {
    rejectUnauthorized: true,
    ...(tls.servername !== null && { servername: tls.servername }),
    ...(tls.ca !== undefined && { ca: tls.ca }),
    ...(tls.client !== undefined && { cert: tls.client.cert, key: tls.client.key }),
  }
}

/** OpenSSL's and Node's TLS error codes, by what they mean to an operator. */
const FAILURES: Array<[RegExp, string]> = [
  [
    /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE)$/,
    "the backend's certificate is not signed by a CA this proxy trusts (backends[].tls.caFile)",
  ],
  [/^ERR_TLS_CERT_ALTNAME_INVALID$/, "the backend's certificate does not carry the name it was reached by (backends[].tls.serverName)"],
  [/^CERT_HAS_EXPIRED$/, "the backend's certificate has expired"],
  [/^CERT_NOT_YET_VALID$/, "the backend's certificate is not valid yet (a clock out of step?)"],
  [/^ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED$/, 'the backend requires a client certificate (backends[].tls.certFile)'],
  [
    /^ERR_SSL_(TLSV1_ALERT_UNKNOWN_CA|SSLV3_ALERT_BAD_CERTIFICATE|SSLV3_ALERT_CERTIFICATE_UNKNOWN|SSLV3_ALERT_UNSUPPORTED_CERTIFICATE|SSLV3_ALERT_CERTIFICATE_EXPIRED|SSLV3_ALERT_CERTIFICATE_REVOKED|TLSV1_ALERT_ACCESS_DENIED)$/,
    'the backend refused our client certificate (not from a CA it trusts, expired or revoked)',
  ],
  [/^ERR_SSL_(WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST)$/, 'the backend does not speak TLS on this port (an http:// backend?)'],
  [/^ERR_SSL_|^ERR_TLS_|^ERR_OSSL_/, 'the TLS handshake with the backend failed'],
]

/** Node's error for a connection the server closed during the handshake (a TLS 1.2 server that
 *  refused our certificate, or one that speaks no TLS): its code alone (ECONNRESET) says less. */
const CLOSED_IN_HANDSHAKE = 'before secure TLS connection was established'

/**
 * Why a connection to an https backend failed at the TLS layer, in words; undefined for anything
 * else. A TLS 1.3 server checks our certificate after our side of the handshake is done, and a
 * server built on Node (this proxy included) refuses it by closing without an alert: undici then
 * sees "other side closed" with not one byte read on a new connection, which counts here too.
 */
export function tlsFailure(err: unknown): string | undefined {
  const e = err as { code?: unknown; message?: string; socket?: { bytesRead?: number } } | null
  const code = e?.code
  if (typeof code !== 'string') return undefined
  const known = FAILURES.find(([pattern]) => pattern.test(code))?.[1]
  if (known !== undefined) return known
  if (code === 'ECONNRESET' && e?.message?.includes(CLOSED_IN_HANDSHAKE)) return 'the backend closed the connection during the TLS handshake: it refused our client certificate, or speaks no TLS here'
  if (code === 'UND_ERR_SOCKET' && e?.socket?.bytesRead === 0) {
    return 'the backend closed the new connection right after the TLS handshake without answering: it wants a client certificate and refused ours, or we showed none (backends[].tls.certFile)'
  }
  return undefined
}

/** How handshakes with one backend go, told to the log when that changes: once when they start
 *  failing (or fail for another reason), once when they work again; never per request. It
 *  outlives the backend's pools, which a TLS file change replaces. */
export class HandshakeLog {
  private failing: string | undefined

  constructor(
    private readonly backend: string,
    private readonly logger: Logger,
  ) {}

  failed(reason: string): void {
    if (reason === this.failing) return
    this.failing = reason
    this.logger.warn({ backend: this.backend, reason }, 'TLS to the backend fails: requests to it get 502 upstream_tls')
  }

  succeeded(): void {
    if (this.failing === undefined) return
    this.failing = undefined
    this.logger.info({ backend: this.backend }, 'TLS to the backend works again')
  }
}
