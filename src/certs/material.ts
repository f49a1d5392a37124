// TLS material from files, for both ends: the listener's certificate (server/tls.ts) and what a
// backend is verified against and shown (upstream/tls.ts). Reading and checking PEM files (parses,
// key matches), and keeping a set of files watched: a change that reads and checks well replaces
// the set in force, anything wrong keeps the last good one and says so.
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { Clock } from '../clock.js'
import { StartupError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics, ReloadKind } from '../metrics.js'
import { watchFiles } from '../watch.js'

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

async function read(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw new TlsMaterialError(`cannot read the ${what} ${file}: ${(err as Error).message}`)
  }
}

/** Reads and checks a pair of PEM files; throws TlsMaterialError naming the file at fault. */
export async function loadTlsMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const [cert, key] = await Promise.all([read(files.certFile, 'certificate'), read(files.keyFile, 'key')])
  return checkTlsMaterial(cert, key, files)
}

export function checkTlsMaterial(cert: string, key: string, files: TlsFiles = { certFile: 'certificate', keyFile: 'key' }): TlsMaterial {
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

/** Reads a PEM bundle of CA certificates; throws TlsMaterialError when it holds none. */
export async function loadCaBundle(file: string): Promise<string> {
  const pem = await read(file, 'CA bundle')
  try {
    new X509Certificate(pem)
  } catch (err) {
    throw new TlsMaterialError(`${file} holds no PEM certificate: ${(err as Error).message}`)
  }
  return pem
}

/** Prefixes a TlsMaterialError with the config path it came from (`listener.tls`, `backends[1].tls.caFile`). */
export function at<T>(path: string, loading: Promise<T>): Promise<T> {
  return loading.catch((err: Error) => Promise.reject(err instanceof TlsMaterialError ? new TlsMaterialError(`${path}: ${err.message}`) : err))
}

export interface ReloadDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  /** Quiet period after the last file event before reading (a rotation touches several files). */
  debounceMs?: number
}

export interface WatchedSource<T> {
  /** What is reloaded, for the log: e.g. { certFile } or { backend }. */
  readonly names: Record<string, string>
  readonly files: readonly string[]
  /** Reads and checks the files; throws on anything that cannot be used. */
  load(): Promise<T>
  /** Whether two reads hold the same material (a touch of the files is not a change). */
  same(a: T, b: T): boolean
  /** What the log says about a new set. */
  describe(value: T): Record<string, unknown>
  /** sidecar_config_reloads_total's kind. */
  kind: ReloadKind
  /** What the log says after a good change, and after a bad one. */
  messages: { reloaded: string; failed: string }
}

/** A set of files in force, watched: each good change is handed to `apply`. */
export class WatchedMaterial<T> {
  private unwatch: (() => void) | undefined
  private reloading: Promise<void> = Promise.resolve()

  constructor(
    private current: T,
    private readonly source: WatchedSource<T>,
    private readonly deps: ReloadDeps,
  ) {}

  get value(): T {
    return this.current
  }

  /** Watches the files' directories (see watch.ts); `apply` puts a new set in force. */
  watch(apply: (value: T) => void): void {
    this.apply = apply
    this.unwatch = watchFiles(this.source.files, () => void this.reload(), {
      logger: this.deps.logger,
      debounceMs: this.deps.debounceMs ?? 250,
      clock: this.deps.clock,
    })
  }

  close(): void {
    this.unwatch?.()
  }

  /** Reads the files now; resolves once the result is applied or rejected. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(() => this.reloadOnce())
    return this.reloading
  }

  private apply: (value: T) => void = () => {}

  private async reloadOnce(): Promise<void> {
    const { logger, metrics } = this.deps
    const { names, kind, messages } = this.source
    let next: T
    try {
      next = await this.source.load()
    } catch (err) {
      metrics.countConfigReload(kind, 'failure')
      logger.error({ err: { message: (err as Error).message }, ...names, ...this.source.describe(this.current) }, messages.failed)
      return
    }
    if (this.source.same(next, this.current)) return
    this.apply(next)
    this.current = next
    metrics.countConfigReload(kind, 'success')
    logger.info({ ...names, ...this.source.describe(next) }, messages.reloaded)
  }
}
