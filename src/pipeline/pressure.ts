// Fairness by behaviour, under pressure only. While a shared resource has room (connections,
// request slots per backend, buffer memory), nobody is refused and nobody is evicted. At its
// ceiling, room is made by evicting whoever has held the resource longest for the least progress
// (a client that reads nothing of its answer, a body sent slower than BODY_MIN_RATE), never by
// refusing the newcomer while such a holder exists: at a pod's front door the newcomer and the
// abuser often share an address, and only behaviour tells them apart. A holder must have been
// stalled for MIN_STALL_MS at least: a client that is merely between two reads is not evicted.
import type { ClientProgress } from './types.js'

/** How long a holder must have been stalled before it may be evicted. */
export const MIN_STALL_MS = 1000
/** A request body arriving slower than this is behind (Apache's mod_reqtimeout MinRate). */
export const BODY_MIN_RATE = 1024

/** A client never stalled, never evicted: what has none to keep up (a mirrored copy, a health
 *  check, an upgrade's handshake). */
export const KEEPS_UP: ClientProgress = { stalledFor: () => 0, evict: () => {} }

/**
 * Of `holders`, the one whose client has been stalled longest (at least MIN_STALL_MS), or with
 * `held`, the one holding most among those stalled; undefined if none is stalled.
 */
export function mostStalled<T extends { readonly progress: ClientProgress }>(holders: Iterable<T>, now: number, held?: (h: T) => number): T | undefined {
  let best: T | undefined
  let bestScore = 0
  for (const h of holders) {
    const stalled = h.progress.stalledFor(now)
    if (stalled < MIN_STALL_MS) continue
    const score = held ? held(h) : stalled
    if (best === undefined || score > bestScore) [best, bestScore] = [h, score]
  }
  return best
}
