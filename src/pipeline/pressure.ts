// Fairness by behaviour, under pressure only. While a shared resource has room (connections,
// request slots per backend, buffer memory), nobody is refused and nobody is evicted. At its
// ceiling, room is made by evicting whoever has held the resource longest for the least progress
// (a client that reads nothing of its answer, a body sent slower than BODY_MIN_RATE), never by
// refusing the newcomer while such a holder exists: at a pod's front door the newcomer and the
// abuser often share an address, and only behaviour tells them apart. A holder must have been
// stalled for MIN_STALL_MS at least: a client that is merely between two reads is not evicted.
import type { Holders, Place } from './holders.js'
import type { ClientProgress } from './types.js'

/** How long a holder must have been stalled before it may be evicted. */
export const MIN_STALL_MS = 1000
/** A request body arriving slower than this is behind (Apache's mod_reqtimeout MinRate). */
export const BODY_MIN_RATE = 1024

/** A client never stalled, never evicted: what has none to keep up (a mirrored copy, a health
 *  check, an upgrade's handshake). */
export const KEEPS_UP: ClientProgress = { stalledFor: () => 0, evict: () => {} }

/**
 * Of `holders`, the place of the one whose client has been stalled longest (at least
 * MIN_STALL_MS), or with `held`, of the one holding most among those stalled; undefined if none
 * is stalled.
 */
export function mostStalled<T extends { readonly progress: ClientProgress }>(holders: Holders<T>, now: number, held?: (h: T) => number): Place<T> | undefined {
  let best: Place<T> | undefined
  let bestScore = 0
  for (const place of holders) {
    const stalled = place.holder.progress.stalledFor(now)
    if (stalled < MIN_STALL_MS) continue
    const score = held ? held(place.holder) : stalled
    if (best === undefined || score > bestScore) [best, bestScore] = [place, score]
  }
  return best
}
