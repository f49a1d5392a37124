// The holders of a shared resource (a backend's request slots, the buffer budget, the
// connections at rest), oldest first: a doubly-linked list, where adding one returns its place,
// by which it is removed in O(1).
//
// Not a Set or a Map. A long-lived Set or Map that gains and loses an entry per request makes V8
// promote every request's objects to the old generation (its hash table is rebuilt as entries
// come and go, and what the old tables held survives the young collections): measured on the
// proxy under a steady 3,000 req/s, each young collection took 12 ms instead of 1.6, and full
// collections came every few seconds (docs/performance.md). A list's links are plain fields,
// cleared when a holder leaves.

/** Where a holder is in its list; detached once removed. */
export interface Place<T> {
  readonly holder: T
  prev: Place<T> | null
  next: Place<T> | null
  listed: boolean
}

export class Holders<T> implements Iterable<Place<T>> {
  private head: Place<T> | null = null
  private tail: Place<T> | null = null
  private count = 0

  get size(): number {
    return this.count
  }

  /** `holder` at the back; its place, to remove it by. */
  add(holder: T): Place<T> {
    const place: Place<T> = { holder, prev: this.tail, next: null, listed: true }
    if (this.tail) this.tail.next = place
    else this.head = place
    this.tail = place
    this.count++
    return place
  }

  /** Takes `place` out of the list; nothing if it is out already. */
  remove(place: Place<T>): void {
    if (!place.listed) return
    place.listed = false
    if (place.prev) place.prev.next = place.next
    else this.head = place.next
    if (place.next) place.next.prev = place.prev
    else this.tail = place.prev
    place.prev = place.next = null
    this.count--
  }

  /** Oldest first. Removing the place just given is safe; removing others is not. */
  *[Symbol.iterator](): Iterator<Place<T>> {
    for (let place = this.head; place !== null; ) {
      const next = place.next
      yield place
      place = next
    }
  }
}
