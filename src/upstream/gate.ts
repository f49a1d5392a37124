// One backend's gate (the overload layer's count, layers/overload.ts): the attempts holding a
// slot and those waiting for one, in line by client connection; and the backend's concurrency
// limit (backends[].concurrency), fixed or adaptive (upstream/concurrency.ts).
import type { Clock } from '../clock.js'
import type { Config } from '../config/schema.js'
import type { Logger } from '../log.js'
import { Holders } from '../pipeline/holders.js'
import type { ClientProgress } from '../pipeline/types.js'
import { AdaptiveLimit } from './concurrency.js'

/** An attempt waiting for a slot: given one, or turned away. */
export interface Waiter {
  take(): void
  refuse(err: Error): void
}

/** The overload layer's count for one backend: attempts holding a slot (and their clients, the
 *  ceiling evicts the most stalled of: layers/overload.ts), and those queued for one. It
 *  outlives a reload, so requests still running on the old config count against the new one. */
export class Gate {
  active = 0
  /** backends[].concurrency's limit on `active` (Infinity without one), and how long a request
   *  may wait for its turn under it (0: as long as its own deadline allows). */
  limit = Infinity
  maxWaitMs = 0
  /** limits.maxConcurrentRequests as the last request's route had it (the overload layer sets
   *  it): the ceiling besides `limit` when a raised limit lets waiters in. */
  most = Infinity
  /** The adaptive limit's state machine, when the limit is adaptive. */
  limiter: AdaptiveLimit | undefined
  readonly holders = new Holders<{ readonly progress: ClientProgress }>()
  /** Waiting attempts per client connection, the connections in turn (a Map keeps order: the
   *  one served goes to the back): one connection's hundred waiting requests do not keep
   *  another's one waiting behind them all. */
  private readonly queues = new Map<object, Waiter[]>()
  private count = 0

  get waiting(): number {
    return this.count
  }

  wait(connection: object, waiter: Waiter): void {
    let queue = this.queues.get(connection)
    if (!queue) this.queues.set(connection, (queue = []))
    queue.push(waiter)
    this.count++
  }

  /** `waiter` gives up (or is turned away); false if it was not waiting. */
  leave(connection: object, waiter: Waiter): boolean {
    const queue = this.queues.get(connection)
    const i = queue ? queue.indexOf(waiter) : -1
    if (i < 0) return false
    queue!.splice(i, 1)
    this.count--
    if (queue!.length === 0) this.queues.delete(connection)
    return true
  }

  /** The next waiter: the first of the connection whose turn it is. */
  next(): Waiter | undefined {
    for (const [connection, queue] of this.queues) {
      const waiter = queue.shift()!
      this.count--
      this.queues.delete(connection)
      if (queue.length > 0) this.queues.set(connection, queue) // to the back of the turn
      return waiter
    }
    return undefined
  }

  /** The connection with the most waiting, and how many. */
  busiest(): [object, Waiter[]] | undefined {
    let most: [object, Waiter[]] | undefined
    for (const entry of this.queues) if (!most || entry[1].length > most[1].length) most = entry
    return most
  }

  /** How many `connection` has waiting. */
  waitingOn(connection: object): number {
    return this.queues.get(connection)?.length ?? 0
  }

  /** Under a raised limit, waiters come in while there is room. */
  admit(): void {
    while (this.active < Math.min(this.limit, this.most)) {
      const waiter = this.next()
      if (!waiter) return
      this.active++
      waiter.take()
    }
  }

  /** Follows backends[].concurrency (at start and on each reload): an adaptive limit keeps its
   *  state across reloads, its settings updated; a fixed one is set; none lifts the limit. */
  configure(concurrency: Config['backends'][number]['concurrency'], deps: { clock: Clock; logger: Logger; random: () => number }, backend: string): void {
    this.maxWaitMs = concurrency?.maxWaitMs ?? 0
    if (concurrency?.adaptive === undefined) {
      this.limiter?.stop()
      this.limiter = undefined
      this.limit = concurrency?.fixed ?? Infinity
      this.admit()
      return
    }
    if (this.limiter) return this.limiter.configure(concurrency.adaptive)
    let logged = concurrency.adaptive.min
    this.limiter = new AdaptiveLimit(concurrency.adaptive, {
      ...deps,
      onChange: (limit) => {
        this.limit = limit
        this.admit()
        // said when it moved by more than half since last said: a step, not every window's
        // wobble, nor the pin to `min` while the minimum latency is measured
        if (this.limiter?.state().phase === 'adapting' && Math.abs(limit - logged) > logged / 2) {
          deps.logger.info({ backend, ...this.limiter.state(), previous: logged }, 'concurrency limit moved')
          logged = limit
        }
      },
    })
    this.limit = this.limiter.limit
  }
}
