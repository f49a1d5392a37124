// Readiness as latches that must all be released (linkerd's server/readiness.rs): each names
// what the pod is still waiting for, so `/ready` can say why it answers 503.
export class Readiness {
  private readonly held = new Map<string, string>()

  /** `onChange` hears every flip between ready and not ready, with what holds it. */
  constructor(private readonly onChange?: (ready: boolean, holding: Record<string, string>) => void) {}

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
