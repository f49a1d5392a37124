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
}

export interface HealthDeps {
  clock: Clock
  logger: Logger
  metrics: Metrics
  probe: (backend: string, path: string, timeoutMs: number) => Promise<ProbeResult>
  /** Told the verdict after every check (so a reason can follow the latest failure). */
  onCheck?: (backend: string, health: BackendHealth) => void
}

export class HealthChecker {
  private readonly state = new Map<string, BackendHealth & { passes: number; failures: number }>()
  /** The pending next check of each backend. */
  private readonly timers = new Map<string, () => void>()
  private stopped = false

  constructor(
    private readonly backends: ReadonlyArray<{ name: string; healthCheck: HealthCheckOptions }>,
    private readonly deps: HealthDeps,
  ) {
    for (const b of backends) {
      this.state.set(b.name, { healthy: false, reason: 'not checked yet', checks: 0, passes: 0, failures: 0 })
      deps.metrics.backendHealthy.labels(b.name).set(0)
    }
  }

  isHealthy = (backend: string): boolean => this.state.get(backend)?.healthy ?? true

  health(backend: string): BackendHealth | undefined {
    const s = this.state.get(backend)
    return s && { healthy: s.healthy, reason: s.reason, checks: s.checks }
  }

  /** Starts every loop; the first check of each runs at once. */
  start(): void {
    for (const b of this.backends) void this.loop(b.name, b.healthCheck)
  }

  stop(): void {
    this.stopped = true
    for (const cancel of this.timers.values()) cancel()
    this.timers.clear()
  }

  /** One check of one backend; exported for the loop and for tests. */
  async check(backend: string, opts: HealthCheckOptions): Promise<void> {
    const s = this.state.get(backend)!
    const result = await this.deps.probe(backend, opts.path, opts.timeoutMs)
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
    this.deps.onCheck?.(backend, { healthy: s.healthy, reason, checks: s.checks })
  }

  private async loop(backend: string, opts: HealthCheckOptions): Promise<void> {
    if (this.stopped) return
    await this.check(backend, opts)
    if (this.stopped) return
    this.timers.set(backend, this.deps.clock.timeout(opts.intervalMs, () => void this.loop(backend, opts)))
  }
}

export function statusExpected(status: number, expected: ReadonlyArray<number | string>): boolean {
  return expected.some((e) => {
    if (typeof e === 'number') return status === e
    const [lo, hi] = e.split('-').map(Number) as [number, number]
    return status >= lo && status <= hi
  })
}
