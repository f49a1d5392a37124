// TLS for the listener: the cipher policy, session-ticket key rotation, loading and checking a
// certificate/key pair, and hot reload when the files change.
//
// Policy: Mozilla's "intermediate" profile, AEAD only. TLS 1.2 with ECDHE key exchange and
// AES-GCM or ChaCha20-Poly1305; the three TLS 1.3 suites; curves X25519, P-256, P-384; no
// renegotiation; a short handshake timeout; session tickets that live TICKET_LIFETIME_S, sealed
// with a key replaced every TICKET_KEY_ROTATION_MS (TLS 1.2 as well: see below).
//
// SNI is read (tlsSocket.servername) but not acknowledged: one certificate is served whatever
// the name, and RFC 6066 asks for the empty server_name reply only from a server that chose by
// the name. Node cannot send it anyway: OpenSSL sends it when the servername callback accepts,
// and Node's callback accepts only when a context was chosen before the ClientHello is read;
// SNICallback and addContext choose later, in the certificate callback, so they do not make it
// send one either (Node 20.20, checked with openssl s_client -tlsextdebug).
//
// Reload: the Secret's files are watched (certs/material.ts); after a short quiet period both
// are read again, checked (parses, key matches, loads into a context) and only then handed to
// `setSecureContext`. New handshakes get the new certificate; open connections keep theirs.
// Anything wrong keeps the last good pair.
import { constants, randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import { createSecureContext, type SecureContextOptions, type Server } from 'node:tls'
import type { Config } from '../config/schema.js'
import { at, checkTlsMaterial, loadCaBundle, loadTlsMaterial, WatchedMaterial, type ReloadDeps, type TlsFiles, type TlsMaterial } from '../certs/material.js'
import type { Clock } from '../clock.js'

const TLS_CIPHERS = [
  // TLS 1.3 (OpenSSL's names; order is the client's choice)
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  // TLS 1.2: forward secrecy (ECDHE) and AEAD only
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':')

const TLS_CURVES = 'X25519:P-256:P-384'

/**
 * How long a session ticket lets its client resume, in seconds: the lifetime hint a client is
 * sent (TLS 1.2 and 1.3), and the age past which the server turns the ticket down (the time is
 * sealed in the ticket). Given to every context, the first and each reload's (policy()):
 * without it OpenSSL's default for TLS applies, 7,200 s. Node documents `sessionTimeout` as
 * defaulting to 300 but passes nothing to OpenSSL unless it is given.
 */
export const TICKET_LIFETIME_S = 300

export interface TlsPolicyOptions {
  minVersion: 'TLSv1.2' | 'TLSv1.3'
}

/** Options shared by every context the listener uses (the first one and every reload). */
export function policy(opts: TlsPolicyOptions): SecureContextOptions {
  return {
    minVersion: opts.minVersion,
    maxVersion: 'TLSv1.3',
    ciphers: TLS_CIPHERS,
    ecdhCurve: TLS_CURVES,
    honorCipherOrder: false, // all suites are strong; let clients without AES hardware pick ChaCha20
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
    sessionTimeout: TICKET_LIFETIME_S,
  }
}

/**
 * Session tickets are sealed with a key a thief could use to open every ticket it sealed: for
 * TLS 1.2, whose tickets travel in the clear and hold the session's master secret, that means
 * decrypting the recorded sessions themselves, the full handshakes included. So the key lives
 * in memory only and is replaced this often. Node holds one key per context: a random one when
 * the context is made (at start and at each certificate reload, which thus also ends every
 * ticket out), then one from here each hour; the old key is overwritten, and a ticket sealed
 * with it means a full handshake. A ticket therefore resumes until the first of: its
 * TICKET_LIFETIME_S, the next rotation, the next certificate reload. A resumption is not given
 * a fresh ticket (Node's ticket callback never asks OpenSSL to renew one), so 5 minutes after
 * a full handshake its client makes a full handshake again.
 *
 * TLS 1.2 tickets stay on (Mozilla's intermediate profile turns them off): the key is in memory
 * only and lives at most an hour; OpenSSL's switch, SSL_OP_NO_TICKET, would also end TLS 1.3
 * resumption, for which OpenSSL then issues stateful tickets that Node's session cache events
 * ('newSession'/'resumeSession') never find; and a TLS 1.2 resumption costs a fifth of a full
 * handshake's CPU (docs/configuration.md, TLS). `minVersion: TLSv1.3` is for those who must
 * have forward secrecy for every session.
 */
export const TICKET_KEY_ROTATION_MS = 60 * 60_000

/** Replaces the server's ticket key every TICKET_KEY_ROTATION_MS; returns the stop. */
export function rotateTicketKeys(server: Server, clock: Clock): () => void {
  let stop: () => void
  const rotate = () => {
    const keys = randomBytes(48)
    server.setTicketKeys(keys) // copied into the server's current context
    keys.fill(0) // and no copy left behind in the JS heap
    stop = clock.timeout(TICKET_KEY_ROTATION_MS, rotate)
  }
  stop = clock.timeout(TICKET_KEY_ROTATION_MS, rotate)
  return () => stop()
}

/** What the listener needs for TLS. */
export interface ListenerTlsOptions {
  material: TlsMaterial
  minVersion: 'TLSv1.2' | 'TLSv1.3'
  handshakeTimeoutMs: number
  http2: boolean
  /** PEM CA bundle for client certificates (mTLS), and whether one is required. */
  clientCa?: string
  requireClientCert: boolean
  clientSubjectHeader?: string
}

export type CertificateDeps = ReloadDeps

/** What new handshakes get: the certificate, and the CAs client certificates must chain to. */
export interface Served {
  material: TlsMaterial
  clientCa: string | undefined
}

/** The files the listener's TLS comes from; the certificate may be ephemeral (no files). */
export interface ListenerTlsFiles {
  pair?: TlsFiles
  clientCaFile?: string
}

/**
 * The listener's certificate and client CA bundle: the one owner of what is served and of the
 * certificate's expiry metric. With files, watches them and applies each good new set as it
 * appears (a cert-manager Secret renews tls.crt, tls.key and ca.crt together).
 */
export class ListenerCertificate {
  private readonly files: WatchedMaterial<Served> | undefined
  private readonly fixed: Served

  constructor(
    initial: Served,
    files: ListenerTlsFiles,
    private readonly deps: CertificateDeps,
  ) {
    this.fixed = initial
    deps.metrics.setCertExpiry(initial.material.notAfter)
    const { pair, clientCaFile } = files
    const watched = [pair?.certFile, pair?.keyFile, clientCaFile].filter((f): f is string => f !== undefined)
    if (watched.length === 0) return
    this.files = new WatchedMaterial(
      initial,
      {
        names: pair ? { certFile: pair.certFile } : { clientCaFile: clientCaFile! },
        files: watched,
        load: async () => {
          const material = pair ? await loadTlsMaterial(pair) : this.fixed.material
          const clientCa = clientCaFile === undefined ? undefined : await loadCaBundle(clientCaFile)
          createSecureContext({ cert: material.cert, key: material.key, ca: clientCa }) // what the server will do; throws on what Node rejects
          return { material, clientCa }
        },
        same: (a, b) => a.material.cert === b.material.cert && a.material.key === b.material.key && a.clientCa === b.clientCa,
        describe: ({ material: { serial, subject, notAfter } }) => ({ serial, subject, notAfter: notAfter.toISOString() }),
        kind: 'tls',
        messages: { reloaded: 'certificate reloaded', failed: 'certificate reload failed; still serving the last good certificate' },
      },
      deps,
    )
  }

  get material(): TlsMaterial {
    return (this.files?.value ?? this.fixed).material
  }

  /** Watches the files (if any); `apply` installs a new set for new handshakes
   *  (tls.Server#setSecureContext); open connections keep theirs. */
  watch(apply: (served: Served) => void): void {
    this.files?.watch((served) => {
      apply(served)
      this.deps.metrics.setCertExpiry(served.material.notAfter)
    })
  }

  close(): void {
    this.files?.close()
  }

  /** Reads the files now; resolves once the result is applied or rejected. */
  reload(): Promise<void> {
    return this.files?.reload() ?? Promise.resolve()
  }
}

/**
 * What the listener's TLS config names, read and checked as a start does before binding (and
 * `validate` too): the certificate and key (parse, belong together), the client CA bundle (holds
 * a certificate). A problem is a TlsMaterialError naming the setting and the file.
 */
export async function loadListenerTlsFiles(
  tls: Exclude<Config['listener']['tls'], false>,
): Promise<{ files?: TlsFiles; material?: TlsMaterial; clientCa?: string }> {
  const out: { files?: TlsFiles; material?: TlsMaterial; clientCa?: string } = {}
  if (tls.certFile !== undefined && tls.keyFile !== undefined) {
    out.files = { certFile: tls.certFile, keyFile: tls.keyFile }
    out.material = await at('listener.tls', loadTlsMaterial(out.files))
  }
  if (tls.clientCaFile !== undefined) out.clientCa = await at('listener.tls.clientCaFile', loadCaBundle(tls.clientCaFile))
  return out
}

/**
 * The listener's TLS setup: certificate files (checked now), or an ephemeral self-signed
 * certificate made in memory when none is configured, or none with `tls: false`.
 */
export async function prepareListenerTls(
  listener: Config['listener'],
  deps: CertificateDeps,
): Promise<{ options: ListenerTlsOptions; certificate: ListenerCertificate } | undefined> {
  const tls = listener.tls
  if (tls === false) return undefined
  const { files, clientCa, ...loaded } = await loadListenerTlsFiles(tls)
  let material = loaded.material
  if (!material) {
    const hosts = ['localhost', '127.0.0.1', '::1', hostname()]
    // node-forge (about 10 MiB of memory) is loaded only by a pod that needs it
    const { selfSigned } = await import('../certs/generate.js')
    const pem = selfSigned({ commonName: 'sidecar-proxy ephemeral', hosts, days: 365 })
    material = checkTlsMaterial(pem.cert, pem.key)
    deps.logger.warn(
      { subject: material.subject, hosts },
      'no certificate configured (listener.tls.certFile/keyFile): serving an ephemeral self-signed certificate made in memory; clients cannot verify it',
    )
  }
  return {
    options: { ...tls, material, http2: listener.http2, ...(clientCa !== undefined && { clientCa }) },
    certificate: new ListenerCertificate(
      { material, clientCa },
      { ...(files && { pair: files }), ...(tls.clientCaFile !== undefined && { clientCaFile: tls.clientCaFile }) },
      deps,
    ),
  }
}
