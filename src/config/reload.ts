// Live reload of the config file (the ConfigMap): the config in force, what may change without
// a restart, and the version a config is known by. A reloaded file is validated whole before
// anything changes; then `apply` (app.ts's wiring) swaps it in. Settings bound to sockets the
// process already holds cannot change live: they are reported, and the running value stays in
// force until the next restart. A bad file keeps the last good config.
import { createHash } from 'node:crypto'
import type { Clock } from '../clock.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { watchFiles } from '../watch.js'
import { isConfigError } from '../errors.js'
import { deepFreeze, formatPath } from './settings.js'
import type { Config } from './schema.js'

export interface ReloadResult {
  result: 'success' | 'failure' | 'unchanged'
  /** The version in force afterwards. */
  version: string
  problems?: readonly string[]
  /** Changed settings that take effect only at the next start. */
  pendingRestart?: readonly string[]
}

export interface InForce {
  config: Config
  version: string
  loadedAt: Date
  /** Settings the file changed that wait for a restart. */
  pendingRestart: readonly string[]
}

export interface ConfigFile {
  path: string
  /** Reads the file again, with the command line's overrides applied. */
  load: () => Promise<Config>
}

export interface LiveConfigDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  /** Swaps a new config in (pools, breakers, health checks, then the request path). It may
   *  first read what the config names (TLS files): a rejection before anything changed fails
   *  the reload like a bad file. */
  apply: (config: Config) => void | Promise<void>
}

/** The config in force, and its reloads from the file (when there is one), one at a time, in order. */
export class LiveConfig {
  private now: InForce
  private reloading: Promise<ReloadResult>
  /** Whether the last reload failed: the next good read says so even when nothing changed. */
  private lastFailed = false
  private stopped = false
  private unwatch: (() => void) | undefined

  constructor(
    initial: Config,
    private readonly file: ConfigFile | undefined,
    private readonly deps: LiveConfigDeps,
  ) {
    this.now = { config: initial, version: configVersion(initial), loadedAt: new Date(), pendingRestart: [] }
    deps.metrics.configInForce(this.now.version, this.now.loadedAt)
    this.reloading = Promise.resolve({ result: 'unchanged', version: this.now.version })
  }

  get current(): InForce {
    return this.now
  }

  /** Reloads whenever the file changes (the kubelet's ConfigMap swap included). */
  watch(): void {
    if (this.file) this.unwatch = watchFiles([this.file.path], () => void this.reload('file changed'), { logger: this.deps.logger, debounceMs: 250, clock: this.deps.clock })
  }

  /** No more reloads: the proxy is draining and its pools are closing. */
  stop(): void {
    this.stopped = true
    this.unwatch?.()
  }

  /**
   * Reads the config file again; a valid one is swapped in at once (requests already in flight
   * finish on the config they started with), an invalid one changes nothing.
   */
  reload(reason: string): Promise<ReloadResult> {
    this.reloading = this.reloading.then(() => this.reloadOnce(reason))
    return this.reloading
  }

  private async reloadOnce(reason: string): Promise<ReloadResult> {
    const { logger, metrics } = this.deps
    const unchanged: ReloadResult = { result: 'unchanged', version: this.now.version }
    if (!this.file) {
      logger.warn({ reason }, 'no config file to reload: the proxy runs on defaults and flags')
      return unchanged
    }
    if (this.stopped) return unchanged
    let loaded: Config
    try {
      loaded = await this.file.load()
    } catch (err) {
      return this.failed(reason, err)
    }
    const fixed = this.lastFailed
    this.lastFailed = false
    const { config, pendingRestart } = effectiveConfig(this.now.config, loaded)
    const version = configVersion(config)
    if (pendingRestart.length > 0) {
      logger.warn({ pendingRestart }, 'config changes settings that take effect only at restart; the running values stay')
    }
    if (version === this.now.version) {
      // what waits for a restart is the file's news even when nothing else changed (an edit of
      // listener.address alone), and is news no longer once the file is put back
      this.now = { ...this.now, pendingRestart }
      if (fixed) metrics.configInForce(version, this.now.loadedAt)
      // a touch of the file is routine; a SIGHUP that changes nothing, or a broken file put
      // back as it was, deserves an answer
      if (fixed) logger.info({ reason, version }, 'config file valid again: the config in force is unchanged')
      else logger[reason === 'file changed' ? 'debug' : 'info']({ reason, version }, 'config read again: nothing changed')
      return { result: 'unchanged', version, pendingRestart }
    }
    try {
      await this.deps.apply(config)
    } catch (err) {
      return this.failed(reason, err)
    }
    const previous = this.now.version
    this.now = { config, version, loadedAt: new Date(), pendingRestart }
    metrics.countConfigReload('config', 'success')
    metrics.configInForce(version, this.now.loadedAt)
    logger.info({ reason, version, previous, backends: config.backends.map((b) => ({ name: b.name, url: b.url, weight: b.weight })) }, 'config reloaded')
    return { result: 'success', version, pendingRestart }
  }

  /** The file, or what it names, cannot be used: the last good config stays. */
  private failed(reason: string, err: unknown): ReloadResult {
    const problems = isConfigError(err) ? err.problems : [(err as Error).message]
    this.lastFailed = true
    this.deps.metrics.countConfigReload('config', 'failure')
    this.deps.logger.error({ reason, file: this.file?.path, problems, version: this.now.version }, 'config reload failed; the last good config stays in force')
    return { result: 'failure', version: this.now.version, problems }
  }
}

/** Paths whose value is fixed at start: the listening sockets and the server's parser limits. */
const RESTART_ONLY: ReadonlyArray<readonly string[]> = [
  ['listener'],
  ['admin'],
  ['limits', 'maxHeaderBytes'],
  ['limits', 'maxConcurrentStreams'],
  ['limits', 'maxTunnels'],
  ['limits', 'tunnelIdleTimeoutMs'],
  ['limits', 'sendIdleTimeoutMs'],
  ['limits', 'maxConnections'],
  ['limits', 'maxConnectionsPerClient'],
  ['limits', 'maxRequestsPerClient'],
  ['limits', 'maxStreamResetsPer10s'],
  ['limits', 'maxEventLoopDelayMs'],
  ['limits', 'responseBufferBytes'],
  ['limits', 'bufferMemoryBytes'],
  // the exporter and its queue are built once, at start (app.ts)
  ['tracing'],
]

/** The reloaded config as it will run: `next`, with the restart-only settings of `running`,
 *  and the paths of those settings that the file changed (to report). */
export function effectiveConfig(running: Config, next: Config): { config: Config; pendingRestart: string[] } {
  const pendingRestart: string[] = []
  const config = structuredClone(next) as Record<string, unknown>
  for (const path of RESTART_ONLY) {
    const was = get(running, path)
    if (JSON.stringify(was) !== JSON.stringify(get(next, path))) pendingRestart.push(formatPath(path))
    const parent = get(config, path.slice(0, -1)) as Record<string, unknown>
    // an optional section absent from the running config stays absent (not a key set to undefined)
    if (was === undefined) delete parent[path.at(-1)!]
    else parent[path.at(-1)!] = structuredClone(was)
  }
  return { config: deepFreeze(config) as Config, pendingRestart }
}

/** A short stable hash of a config: equal configs, equal versions. */
export function configVersion(config: Config): string {
  return createHash('sha256').update(stableJson(config)).digest('hex').slice(0, 12)
}

function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

function get(value: unknown, path: readonly string[]): unknown {
  return path.reduce<unknown>((v, k) => (v as Record<string, unknown>)[k], value)
}
