// Counting in plain numbers, for the metrics every request or connection moves: prom-client
// builds, checks and hashes the label set on each inc() and observe(), so these counts are kept
// here and handed to it when Prometheus scrapes (metrics.ts).

/** One label set's observations: a count per bucket (the last past every bound), sum, count;
 *  and per bucket the latest observation of a traced request (an OpenMetrics exemplar). */
export class Series {
  readonly counts: number[]
  sum = 0
  count = 0
  /** Made at the first exemplar: without tracing a series never holds one. */
  exemplars: Array<Exemplar | undefined> | undefined

  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0)
  }

  /** Counts `value`; its bucket's index. */
  observe(value: number): number {
    const bounds = this.bounds
    let i = 0
    while (i < bounds.length && value > bounds[i]!) i++
    this.counts[i]!++
    this.sum += value
    this.count++
    return i
  }

  /** `value`, observed in bucket `i`, came from the traced request `traceId` (its span `spanId`). */
  exemplify(i: number, value: number, traceId: string, spanId: string | undefined, timestampMs: number): void {
    const exemplars = (this.exemplars ??= new Array<Exemplar | undefined>(this.counts.length).fill(undefined))
    exemplars[i] = { traceId, spanId, value, timestampMs }
  }
}

/** An observation of a traced request, shown beside its bucket to an OpenMetrics scraper. */
export interface Exemplar {
  traceId: string
  spanId: string | undefined
  value: number
  timestampMs: number
}

/** One more in `totals[a][b]` (prototype-free records: a route may be named "constructor"). */
export function count(totals: Record<string, Record<string, number>>, a: string, b: string): void {
  const inner = (totals[a] ??= Object.create(null) as Record<string, number>)
  inner[b] = (inner[b] ?? 0) + 1
}

/**
 * Counts per label combination in nested maps (no key string built per count); `drain` hands
 * each combination's count since the last drain to a callback and starts again from zero.
 */
export class Tally {
  private readonly root = new Map<string | number, unknown>()

  constructor(private readonly depth: 1 | 2 | 3 | 4) {}

  /** One more for the labels, `depth` of them (no array made per call). */
  add(a: string, b?: string | number, c?: string | number, d?: string | number): void {
    const depth = this.depth
    let map = this.root
    if (depth > 1) map = this.inner(map, a)
    if (depth > 2) map = this.inner(map, b!)
    if (depth > 3) map = this.inner(map, c!)
    const last = depth === 1 ? a : depth === 2 ? b! : depth === 3 ? c! : d!
    map.set(last, ((map.get(last) as number | undefined) ?? 0) + 1)
  }

  private inner(map: Map<string | number, unknown>, key: string | number): Map<string | number, unknown> {
    let inner = map.get(key) as Map<string | number, unknown> | undefined
    if (!inner) map.set(key, (inner = new Map()))
    return inner
  }

  drain(fn: (labels: string[], n: number) => void): void {
    const walk = (map: Map<string | number, unknown>, path: string[]) => {
      for (const [key, value] of map) {
        if (value instanceof Map) walk(value as Map<string | number, unknown>, [...path, String(key)])
        else if ((value as number) > 0) {
          fn([...path, String(key)], value as number)
          map.set(key, 0)
        }
      }
    }
    walk(this.root, [])
  }
}

