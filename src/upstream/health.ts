// Active health checks, one loop per backend (Envoy's model): a GET to healthCheck.path (or the
// standard gRPC health check) every intervalMs. healthyThreshold consecutive passes make a backend healthy, unhealthyThreshold
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
  /** The standard gRPC health check instead of a GET: passes on SERVING. */
  grpc?: { service: string } | undefined
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
  probe: (check: HealthCheckOptions) => Promise<ProbeResult>
  /** Told the verdict after every check (so a reason can follow the latest failure), and
   *  whether this check changed it. */
  onCheck?: (health: BackendHealth, changed: boolean) => void
}

export class HealthCheck {
  private healthyNow = false
  private reason = 'not checked yet'
  private checks = 0
  private passes = 0
  private failures = 0
  private cancelNext: (() => void) | undefined
  private running = false
  private stopped = false

  /** `previous`: the check this one replaces (new settings, same backend): its verdict and
   *  counts carry over. Without it the backend starts unhealthy, not checked yet. */
  constructor(
    readonly backend: string,
    readonly opts: HealthCheckOptions,
    private readonly deps: HealthDeps,
    previous?: HealthCheck,
  ) {
    if (previous) {
      this.healthyNow = previous.healthyNow
      this.reason = previous.reason
      this.checks = previous.checks
      this.passes = previous.passes
      this.failures = previous.failures
    } else {
      deps.metrics.setBackendHealthy(backend, false)
    }
  }

  get healthy(): boolean {
    return this.healthyNow
  }

  health(): BackendHealth {
    return { healthy: this.healthyNow, reason: this.reason, checks: this.checks, lastCheckPassed: this.passes > 0 }
  }

  /** Starts the loop; the first check runs at once. */
  start(): void {
    if (this.running || this.stopped) return
    this.running = true
    const loop = async (): Promise<void> => {
      await this.check()
      if (this.running) this.cancelNext = this.deps.clock.timeout(this.opts.intervalMs, () => void loop())
    }
    void loop()
  }

  /** Stops the loop for good; a check under way is dropped when it returns. */
  stop(): void {
    this.running = false
    this.stopped = true
    this.cancelNext?.()
  }

  /** One check; exported for the loop and for tests. */
  async check(): Promise<void> {
    const opts = this.opts
    const result = await this.deps.probe(opts)
    if (this.stopped) return // replaced or removed meanwhile
    const what = opts.grpc ? `gRPC health check${opts.grpc.service ? ` of ${opts.grpc.service}` : ''}` : `GET ${opts.path}`
    const passed = result.ok && (opts.grpc ? result.serving === 'SERVING' : statusExpected(result.status, opts.expectedStatuses))
    const reason = result.ok ? `${what} answered ${result.serving ?? result.status}` : `${what} failed: ${result.error}: ${result.detail}`
    this.checks++
    this.deps.metrics.countHealthCheck(this.backend, passed ? 'success' : result.ok ? 'failure' : 'error')
    this.reason = reason
    if (passed) {
      this.passes++
      this.failures = 0
    } else {
      this.failures++
      this.passes = 0
    }
    const flip = this.healthyNow ? !passed && this.failures >= opts.unhealthyThreshold : passed && this.passes >= opts.healthyThreshold
    if (flip) {
      this.healthyNow = !this.healthyNow
      this.deps.metrics.setBackendHealthy(this.backend, this.healthyNow)
    }
    // Said once per change, the very first verdict included: an app that is not there at start
    // is news (it starts unhealthy, so no flip would ever say so).
    if (flip || (this.checks === 1 && !passed)) {
      this.deps.logger[this.healthyNow ? 'info' : 'warn'](
        { backend: this.backend, healthy: this.healthyNow, reason },
        `backend ${this.healthyNow ? 'healthy' : 'unhealthy'}`,
      )
    }
    this.deps.onCheck?.(this.health(), flip)
  }
}

export function statusExpected(status: number, expected: ReadonlyArray<number | string>): boolean {
  return expected.some((e) => {
    if (typeof e === 'number') return status === e
    const [lo, hi] = e.split('-').map(Number) as [number, number]
    return status >= lo && status <= hi
  })
}
