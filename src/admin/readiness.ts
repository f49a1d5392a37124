// Readiness as latches that must all be released (linkerd's server/readiness.rs): each names
// what the pod is still waiting for, so `/ready` can say why it answers 503.
export class Readiness {
  private readonly held = new Map<string, string>()

  /** Hold `name` with a human reason; the pod is unready while any latch is held. */
  hold(name: string, reason: string): void {
    this.held.set(name, reason)
  }

  release(name: string): void {
    this.held.delete(name)
  }

  isHeld(name: string): boolean {
    return this.held.has(name)
  }

  /** The latches still held, name -> reason. */
  holding(): Record<string, string> {
    return Object.fromEntries(this.held)
  }
}
