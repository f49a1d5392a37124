// TLS for the listener: the cipher policy, session-ticket key rotation, loading and checking a
// certificate/key pair, and hot reload when the files change.
//
// Policy: Mozilla's "intermediate" profile, AEAD only. TLS 1.2 with ECDHE key exchange and
// AES-GCM or ChaCha20-Poly1305; the three TLS 1.3 suites; curves X25519, P-256, P-384; no
// renegotiation; a short handshake timeout.
//
// Reload: the Secret's directory is watched (see watch.ts); after a short quiet period both files
// are read again, checked (parses, key matches, loads into a context) and only then handed to
// `setSecureContext`. New handshakes get
// the new certificate; open connections keep theirs. Anything wrong keeps the last good pair.
import { X509Certificate, constants, createPrivateKey, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { createSecureContext, type SecureContextOptions, type Server } from 'node:tls'
import type { Config } from '../config/schema.js'
import { StartupError } from '../errors.js'
import type { Clock } from '../clock.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { watchFiles } from '../watch.js'

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
  }
}

/**
 * TLS session tickets are sealed with a key a thief could use to decrypt every resumed session
 * it sealed; the key is replaced this often (Node's starting key is random per process). Node
 * holds one key at a time, so a ticket issued under the previous key just means a full
 * handshake; tickets live 5 minutes (Node's default sessionTimeout), so few are affected.
 */
export const TICKET_KEY_ROTATION_MS = 60 * 60_000

/** Replaces the server's ticket key every TICKET_KEY_ROTATION_MS; returns the stop. */
export function rotateTicketKeys(server: Server, clock: Clock): () => void {
  let stop: () => void
  const rotate = () => {
    server.setTicketKeys(randomBytes(48))
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

/** A certificate and key that have been checked to belong together. */
export interface TlsMaterial {
  cert: string
  key: string
  serial: string
  subject: string
  notAfter: Date
}

export interface TlsFiles {
  certFile: string
  keyFile: string
}

/** The problem, in words an operator can act on (a start-up error: exit code 2). */
export class TlsMaterialError extends StartupError {
  constructor(message: string) {
    super('tls_material_invalid', message)
  }
}

/** Reads and checks a pair of PEM files; throws TlsMaterialError naming the file at fault. */
async function loadTlsMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const read = async (file: string, what: string) => {
    try {
      return await readFile(file, 'utf8')
    } catch (err) {
      throw new TlsMaterialError(`cannot read the ${what} ${file}: ${(err as Error).message}`)
    }
  }
  const [cert, key] = await Promise.all([read(files.certFile, 'certificate'), read(files.keyFile, 'key')])
  return checkTlsMaterial(cert, key, files)
}

function checkTlsMaterial(cert: string, key: string, files: TlsFiles = { certFile: 'certificate', keyFile: 'key' }): TlsMaterial {
  let x509: X509Certificate
  try {
    x509 = new X509Certificate(cert)
  } catch (err) {
    throw new TlsMaterialError(`${files.certFile} is not a PEM certificate: ${(err as Error).message}`)
  }
  let privateKey
  try {
    privateKey = createPrivateKey(key)
  } catch (err) {
    throw new TlsMaterialError(`${files.keyFile} is not a PEM private key: ${(err as Error).message}`)
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new TlsMaterialError(`${files.keyFile} does not match the certificate in ${files.certFile}`)
  }
  return { cert, key, serial: x509.serialNumber, subject: x509.subject.replace(/\n/g, ', '), notAfter: new Date(x509.validTo) }
}

export interface CertificateDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  /** Quiet period after the last file event before reading (a rotation touches several files). */
  debounceMs?: number
}

/**
 * The listener's certificate: the one owner of what is served and of its expiry metric. With
 * files, watches their directories and applies each good new pair as it appears.
 */
export class ListenerCertificate {
  private unwatch: (() => void) | undefined
  private current!: TlsMaterial
  private reloading: Promise<void> = Promise.resolve()
  private apply: (material: TlsMaterial) => void = () => {}

  constructor(
    initial: TlsMaterial,
    private readonly files: TlsFiles | undefined,
    private readonly deps: CertificateDeps,
  ) {
    this.set(initial)
  }

  get material(): TlsMaterial {
    return this.current
  }

  /** Watches the files (if the certificate came from files); `apply` installs a new pair for new
   *  handshakes (tls.Server#setSecureContext). */
  watch(apply: (material: TlsMaterial) => void): void {
    this.apply = apply
    if (!this.files) return
    const files = [this.files.certFile, this.files.keyFile]
    this.unwatch = watchFiles(files, () => void this.reload(), { logger: this.deps.logger, debounceMs: this.deps.debounceMs ?? 250, clock: this.deps.clock })
  }

  close(): void {
    this.unwatch?.()
  }

  /** Reads the files now; resolves once the result is applied or rejected. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(() => this.reloadOnce())
    return this.reloading
  }

  private set(material: TlsMaterial): void {
    this.current = material
    this.deps.metrics.setCertExpiry(material.notAfter)
  }

  private async reloadOnce(): Promise<void> {
    const { logger, metrics } = this.deps
    if (!this.files) return
    let next: TlsMaterial
    try {
      next = await loadTlsMaterial(this.files)
      createSecureContext({ cert: next.cert, key: next.key }) // what the server will do; throws on what Node rejects
    } catch (err) {
      metrics.countConfigReload('tls', 'failure')
      logger.error(
        { err: { message: (err as Error).message }, certFile: this.files.certFile, serving: this.current.serial },
        'certificate reload failed; still serving the last good certificate',
      )
      return
    }
    if (next.cert === this.current.cert && next.key === this.current.key) return // a touch, not a change
    this.apply(next)
    this.set(next)
    metrics.countConfigReload('tls', 'success')
    logger.info({ serial: next.serial, subject: next.subject, notAfter: next.notAfter.toISOString() }, 'certificate reloaded')
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
    out.material = await loadTlsMaterial(out.files).catch((err: Error) => Promise.reject(new TlsMaterialError(`listener.tls: ${err.message}`)))
  }
  if (tls.clientCaFile !== undefined) {
    const file = tls.clientCaFile
    try {
      out.clientCa = await readFile(file, 'utf8')
    } catch (err) {
      throw new TlsMaterialError(`listener.tls.clientCaFile: cannot read the CA bundle ${file}: ${(err as Error).message}`)
    }
    try {
      new X509Certificate(out.clientCa)
    } catch (err) {
      throw new TlsMaterialError(`listener.tls.clientCaFile: ${file} holds no PEM certificate: ${(err as Error).message}`)
    }
  }
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
    certificate: new ListenerCertificate(material, files, deps),
  }
}
