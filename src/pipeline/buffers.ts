// One ceiling for the bytes the proxy holds in memory on behalf of slow peers: request bodies
// received before a connection to the app is taken, and responses read ahead of slow clients.
// Each buffer takes its bytes before it grows and gives them back when done; past the ceiling,
// bodies stream instead (a slow client then holds an app connection, as without buffers), and
// room is made for the next ones: the holder whose client has stalled, holding most, is evicted
// (pipeline/pressure.ts; Envoy's overload manager resets the streams holding most buffer memory).
import { mostStalled } from './pressure.js'
import type { ClientProgress } from './types.js'

/** A buffer whose bytes are taken from the budget, while its client may be stalled. */
export interface BufferHolder {
  readonly progress: ClientProgress
  /** Bytes it holds now. */
  readonly held: number
}

export class BufferBudget {
  private usedNow = 0
  private readonly holders = new Set<BufferHolder>()

  constructor(
    readonly ceiling: number,
    private readonly now: () => number = Date.now,
  ) {}

  get used(): number {
    return this.usedNow
  }

  /** Takes `bytes` if they fit under the ceiling; if not, evicts the stalled holder that holds
   *  most, if any, to make room for the next one. */
  take(bytes: number): boolean {
    if (this.usedNow + bytes <= this.ceiling) {
      this.usedNow += bytes
      return true
    }
    const victim = mostStalled(this.holders, this.now(), (h) => h.held)
    if (victim) {
      this.holders.delete(victim)
      victim.progress.evict('buffers')
    }
    return false
  }

  give(bytes: number): void {
    this.usedNow -= bytes
  }

  /** `holder` holds bytes of the budget, and may be evicted for them, until `released`. */
  hold(holder: BufferHolder): void {
    this.holders.add(holder)
  }

  released(holder: BufferHolder): void {
    this.holders.delete(holder)
  }
}
