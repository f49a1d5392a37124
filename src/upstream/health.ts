// Active health checks, one loop per backend (Envoy's model): a GET to healthCheck.path every
// intervalMs. healthyThreshold consecutive passes make a backend healthy, unhealthyThreshold
// consecutive failures make it unhealthy. A backend starts unhealthy: the pod is not ready until
// its app has answered. Every change is counted in sidecar_backend_healthy and logged with why.
import type { Clock } from '../clock.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { ProbeResult } from './client.js'

export interface HealthCheckOptions {
  path: string
  intervalMs: number
  timeoutMs: number
  healthyThreshold: number
  unhealthyThreshold: number
  expectedStatuses: ReadonlyArray<number | string>
}

export interface BackendHealth {
  healthy: boolean
  /** Why the backend is in its state: the last check's result in words. */
  reason: string
  checks: number
  /** Whether the last check passed: a verdict flips only after several in a row. */
  lastCheckPassed: boolean
}

export interface HealthDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  probe: (backend: string, path: string, timeoutMs: number) => Promise<ProbeResult>
  /** Told the verdict after every check (so a reason can follow the latest failure), and
   *  whether this check changed it. */
  onCheck?: (backend: string, health: BackendHealth, changed: boolean) => void
}

interface Checked {
  url: string
  healthCheck: HealthCheckOptions
}

interface State extends Omit<BackendHealth, 'lastCheckPassed'> {
  passes: number
  failures: number
  /** The backend's url and healthCheck; a loop whose settings are replaced stops. */
  settings: Checked
}

export class HealthChecker {
  private readonly state = new Map<string, State>()
  /** The pending next check of each backend. */
  private readonly timers = new Map<string, () => void>()
  private started = false

  constructor(
    backends: ReadonlyArray<{ name: string } & Checked>,
    private readonly deps: HealthDeps,
  ) {
    this.sync(backends)
  }

  isHealthy = (backend: string): boolean => this.state.get(backend)?.healthy ?? true

  health(backend: string): BackendHealth | undefined {
    const s = this.state.get(backend)
    return s && { healthy: s.healthy, reason: s.reason, checks: s.checks, lastCheckPassed: s.passes > 0 }
  }

  /**
   * Makes the checked backends match a reloaded config. A new backend, or one whose url changed,
   * starts unhealthy and is checked at once; new check settings restart the loop but keep the
   * verdict; a removed backend's loop stops and its verdict is forgotten.
   */
  sync(backends: ReadonlyArray<{ name: string } & Checked>): void {
    const names = new Set(backends.map((b) => b.name))
    for (const name of this.state.keys()) {
      if (names.has(name)) continue
      this.stopLoop(name)
      this.state.delete(name)
      this.deps.metrics.backendHealthy.remove(name)
    }
    for (const b of backends) {
      const settings = { url: b.url, healthCheck: b.healthCheck }
      const s = this.state.get(b.name)
      if (s && JSON.stringify(s.settings) === JSON.stringify(settings)) continue
      if (s && s.settings.url === b.url) {
        s.settings = settings
      } else {
        this.state.set(b.name, { healthy: false, reason: 'not checked yet', checks: 0, passes: 0, failures: 0, settings })
        this.deps.metrics.backendHealthy.labels(b.name).set(0)
      }
      if (this.started) this.startLoop(b.name)
    }
  }

  /** Starts every loop; the first check of each runs at once. */
  start(): void {
    this.started = true
    for (const name of this.state.keys()) this.startLoop(name)
  }

  stop(): void {
    this.started = false
    for (const name of [...this.timers.keys()]) this.stopLoop(name)
  }

  /** One check of one backend; exported for the loop and for tests. */
  async check(backend: string): Promise<void> {
    const s = this.state.get(backend)
    if (!s) return
    const { settings } = s
    const opts = settings.healthCheck
    const result = await this.deps.probe(backend, opts.path, opts.timeoutMs)
    if (this.state.get(backend)?.settings !== settings) return // replaced or removed meanwhile
    const passed = result.ok && statusExpected(result.status, opts.expectedStatuses)
    const reason = result.ok ? `GET ${opts.path} answered ${result.status}` : `GET ${opts.path} failed: ${result.error}: ${result.detail}`
    s.checks++
    s.reason = reason
    if (passed) {
      s.passes++
      s.failures = 0
    } else {
      s.failures++
      s.passes = 0
    }
    const flip = s.healthy ? !passed && s.failures >= opts.unhealthyThreshold : passed && s.passes >= opts.healthyThreshold
    if (flip) {
      s.healthy = !s.healthy
      this.deps.metrics.backendHealthy.labels(backend).set(s.healthy ? 1 : 0)
      this.deps.logger[s.healthy ? 'info' : 'warn']({ backend, healthy: s.healthy, reason }, `backend ${s.healthy ? 'healthy' : 'unhealthy'}`)
    }
    this.deps.onCheck?.(backend, { healthy: s.healthy, reason, checks: s.checks, lastCheckPassed: passed }, flip)
  }

  private startLoop(backend: string): void {
    this.stopLoop(backend)
    const settings = this.state.get(backend)!.settings
    const current = () => this.started && this.state.get(backend)?.settings === settings
    const loop = async (): Promise<void> => {
      await this.check(backend)
      if (current()) this.timers.set(backend, this.deps.clock.timeout(settings.healthCheck.intervalMs, () => void loop()))
    }
    void loop() // a loop whose settings are replaced, or stopped, ends itself after its check
  }

  private stopLoop(backend: string): void {
    this.timers.get(backend)?.()
    this.timers.delete(backend)
  }
}

export function statusExpected(status: number, expected: ReadonlyArray<number | string>): boolean {
  return expected.some((e) => {
    if (typeof e === 'number') return status === e
    const [lo, hi] = e.split('-').map(Number) as [number, number]
    return status >= lo && status <= hi
  })
}
