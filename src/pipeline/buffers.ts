// One ceiling for the bytes the proxy holds in memory on behalf of slow peers: request bodies
// received before a connection to the app is taken, responses read ahead of slow clients, and
// what an answer whose client has stopped taking it holds on its way (its body's buffer, the
// client connection's). A buffer takes its bytes before it grows and gives them back when done;
// past the ceiling, bodies stream instead (a slow client then holds an app connection, as
// without buffers). A stalled answer's bytes are held already: they are charged, and past the
// ceiling room is made. Room is made by evicting the holder whose client has stalled, holding
// most (pipeline/pressure.ts; Envoy's overload manager resets the streams holding most buffer
// memory): so many clients reading nothing cost this ceiling, not their number times an answer's
// buffers.
import { Holders, type Place } from './holders.js'
import { mostStalled } from './pressure.js'
import type { ClientProgress } from './types.js'

/** A buffer whose bytes are taken from the budget, while its client may be stalled. */
export interface BufferHolder {
  readonly progress: ClientProgress
  /** Bytes it holds now. */
  readonly held: number
  /** Set by the budget while it is charged (charge, discharge): what, and its place. */
  charged?: { bytes: number; place: Place<BufferHolder> } | undefined
}

export class BufferBudget {
  private usedNow = 0
  /** Those that may be evicted for the bytes they hold: takers (hold) and the charged. */
  private readonly holders = new Holders<BufferHolder>()

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
    this.evictOne()
    return false
  }

  /** Counts `holder.held`, bytes it holds already, until `discharge`; past the ceiling, evicts
   *  stalled holders, holding most first, until back under it (or none is stalled). */
  charge(holder: BufferHolder): void {
    const bytes = holder.held
    holder.charged = { bytes, place: this.holders.add(holder) }
    this.usedNow += bytes
    while (this.usedNow > this.ceiling && this.evictOne());
  }

  /** A charged holder's bytes, given back. */
  discharge(holder: BufferHolder): void {
    const charged = holder.charged
    if (charged === undefined) return
    holder.charged = undefined
    this.holders.remove(charged.place)
    this.usedNow -= charged.bytes
  }

  private evictOne(): boolean {
    const victim = mostStalled(this.holders, this.now(), (h) => h.held)
    if (!victim) return false
    this.holders.remove(victim)
    this.discharge(victim.holder) // a charged one's bytes go with it; a taker gives its own back
    victim.holder.progress.evict('buffers')
    return true
  }

  give(bytes: number): void {
    this.usedNow -= bytes
  }

  /** `holder` holds bytes of the budget, and may be evicted for them, until its place is
   *  `released`. */
  hold(holder: BufferHolder): Place<BufferHolder> {
    return this.holders.add(holder)
  }

  released(place: Place<BufferHolder>): void {
    this.holders.remove(place)
  }
}
