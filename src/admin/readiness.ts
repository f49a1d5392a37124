// Readiness as latches that must all be released (linkerd's server/readiness.rs): each names
// what the pod is still waiting for, so `/ready` can say why it answers 503.
import type { BackendHealth } from '../upstream/health.js'

export class Readiness {
  private readonly held = new Map<string, string>()

  /** `onChange` hears every flip between ready and not ready, with what holds it; `initial`
   *  latches are held from the start, without a flip to tell. */
  constructor(
    private readonly onChange?: (ready: boolean, holding: Record<string, string>) => void,
    initial: Record<string, string> = {},
  ) {
    for (const [name, reason] of Object.entries(initial)) this.held.set(name, reason)
  }

  /** Hold `name` with a human reason; the pod is unready while any latch is held. */
  hold(name: string, reason: string): void {
    const wasReady = this.held.size === 0
    this.held.set(name, reason)
    if (wasReady) this.onChange?.(false, this.holding())
  }

  release(name: string): void {
    if (this.held.delete(name) && this.held.size === 0) this.onChange?.(true, {})
  }

  isHeld(name: string): boolean {
    return this.held.has(name)
  }

  /** The latches still held, name -> reason. */
  holding(): Record<string, string> {
    return Object.fromEntries(this.held)
  }
}

/**
 * Readiness follows the health of the backends that gate it (weight above 0 and gatesReadiness):
 * one latch each, held with the latest check's reason until the backend is healthy.
 */
export class BackendLatches {
  private gating = new Set<string>()

  constructor(
    private readonly readiness: Readiness,
    private readonly health: (backend: string) => BackendHealth | undefined,
  ) {}

  /** The gating backends of the config in force: those no longer gating release their latch. */
  set(backends: Iterable<string>): void {
    const was = this.gating
    this.gating = new Set(backends)
    for (const name of was) if (!this.gating.has(name)) this.readiness.release(latch(name))
    for (const name of this.gating) this.follow(name)
  }

  /** A gating backend's latch follows its latest verdict, with the reason. */
  follow(backend: string): void {
    if (!this.gating.has(backend)) return
    const h = this.health(backend)
    if (h?.healthy) this.readiness.release(latch(backend))
    else this.readiness.hold(latch(backend), h && h.checks > 0 ? `unhealthy: ${h.reason}` : 'no health check has passed yet')
  }
}

const latch = (backend: string) => `backend:${backend}`
