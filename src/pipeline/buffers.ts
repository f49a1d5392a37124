// One ceiling for the bytes the proxy holds in memory on behalf of slow peers: request bodies
// received before a connection to the app is taken, and responses read ahead of slow clients.
// Each buffer takes its bytes before it grows and gives them back when done; past the ceiling,
// bodies stream instead (a slow client then holds an app connection, as without buffers).
export class BufferBudget {
  private usedNow = 0

  constructor(readonly ceiling: number) {}

  get used(): number {
    return this.usedNow
  }

  /** Takes `bytes` if they fit under the ceiling. */
  take(bytes: number): boolean {
    if (this.usedNow + bytes > this.ceiling) return false
    this.usedNow += bytes
    return true
  }

  give(bytes: number): void {
    this.usedNow -= bytes
  }
}
