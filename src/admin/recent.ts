// What GET /status says of "right now": requests and 5xx per backend, retries and refusals, in
// 10-second buckets over the last 5 minutes. Prometheus counters cannot say it alone; the
// metrics recorders tell this observer what they count.
import type { MetricsObserver } from '../metrics.js'

/** Requests and 5xx answers per backend: the split and the error rate "right now". Retries (per
 *  backend and reason), refusals (per reason) and retries the budget stopped are kept in the
 *  same buckets. */
export class RecentRequests implements MetricsObserver {
  static readonly BUCKET_MS = 10_000
  static readonly BUCKETS = 30
  /** Oldest first; each bucket's start is a multiple of BUCKET_MS. */
  private readonly buckets: Bucket[] = []

  constructor(private readonly now: () => number) {}

  record(backend: string, status: number, route = 'default'): void {
    const bucket = this.current()
    count(bucket.counts, backend, status)
    count(bucket.routes, route, status)
  }

  /** A retry after a failed try on `backend`, for `reason` (the retryOn condition). */
  recordRetry(backend: string, reason: string): void {
    const retries = this.current().retries
    let byReason = retries.get(backend)
    if (!byReason) retries.set(backend, (byReason = new Map()))
    byReason.set(reason, (byReason.get(reason) ?? 0) + 1)
  }

  /** A request refused before reaching a backend, for `reason` (its error code). */
  recordRejection(reason: string): void {
    const rejections = this.current().rejections
    rejections.set(reason, (rejections.get(reason) ?? 0) + 1)
  }

  /** A retry not made because the retry budget was spent. */
  recordBudgetExhausted(): void {
    this.current().budgetExhausted++
  }

  /** Totals per backend over the last `windowMs` (whole buckets, the current one included). */
  totals(windowMs = 60_000): Record<string, { requests: number; errors: number }> {
    const out: Record<string, { requests: number; errors: number }> = {}
    for (const b of this.since(windowMs)) {
      for (const [backend, c] of b.counts) {
        const o = (out[backend] ??= { requests: 0, errors: 0 })
        o.requests += c.requests
        o.errors += c.errors
      }
    }
    return out
  }

  /** Totals per route over the last `windowMs`. */
  routeTotals(windowMs = 60_000): Record<string, { requests: number; errors: number }> {
    const out: Record<string, { requests: number; errors: number }> = {}
    for (const b of this.since(windowMs)) {
      for (const [route, c] of b.routes) {
        const o = (out[route] ??= { requests: 0, errors: 0 })
        o.requests += c.requests
        o.errors += c.errors
      }
    }
    return out
  }

  /** Retries over the last `windowMs` per backend and reason, and those the budget stopped. */
  retries(windowMs = 60_000): { byBackend: Record<string, Record<string, number>>; budgetExhausted: number } {
    const byBackend: Record<string, Record<string, number>> = {}
    let budgetExhausted = 0
    for (const b of this.since(windowMs)) {
      budgetExhausted += b.budgetExhausted
      for (const [backend, byReason] of b.retries) {
        const o = (byBackend[backend] ??= {})
        for (const [reason, n] of byReason) o[reason] = (o[reason] ?? 0) + n
      }
    }
    return { byBackend, budgetExhausted }
  }

  /** Refusals over the last `windowMs` per reason. */
  rejections(windowMs = 60_000): Record<string, number> {
    const byReason: Record<string, number> = {}
    for (const b of this.since(windowMs)) {
      for (const [reason, n] of b.rejections) byReason[reason] = (byReason[reason] ?? 0) + n
    }
    return byReason
  }

  /** Every bucket of the last 5 minutes, oldest first, empty ones included: a chart's points. */
  series(): Array<{ start: number; requests: number; errors: number }> {
    const last = Math.floor(this.now() / RecentRequests.BUCKET_MS) * RecentRequests.BUCKET_MS
    const byStart = new Map(this.buckets.map((b) => [b.start, b]))
    return Array.from({ length: RecentRequests.BUCKETS }, (_, i) => {
      const start = last - (RecentRequests.BUCKETS - 1 - i) * RecentRequests.BUCKET_MS
      let requests = 0
      let errors = 0
      for (const c of byStart.get(start)?.counts.values() ?? []) {
        requests += c.requests
        errors += c.errors
      }
      return { start, requests, errors }
    })
  }

  /** The bucket of this moment, started if need be (the oldest then goes). */
  private current(): Bucket {
    const start = Math.floor(this.now() / RecentRequests.BUCKET_MS) * RecentRequests.BUCKET_MS
    let bucket = this.buckets.at(-1)
    if (bucket?.start !== start) {
      this.buckets.push((bucket = { start, counts: new Map(), routes: new Map(), retries: new Map(), rejections: new Map(), budgetExhausted: 0 }))
      if (this.buckets.length > RecentRequests.BUCKETS) this.buckets.shift()
    }
    return bucket
  }

  private since(windowMs: number) {
    const from = this.now() - windowMs
    return this.buckets.filter((b) => b.start + RecentRequests.BUCKET_MS > from)
  }
}

interface Bucket {
  start: number
  counts: Map<string, { requests: number; errors: number }>
  /** route name -> requests and 5xx */
  routes: Map<string, { requests: number; errors: number }>
  /** backend -> reason -> retries */
  retries: Map<string, Map<string, number>>
  /** reason -> refusals */
  rejections: Map<string, number>
  budgetExhausted: number
}

function count(counts: Map<string, { requests: number; errors: number }>, key: string, status: number): void {
  let c = counts.get(key)
  if (!c) counts.set(key, (c = { requests: 0, errors: 0 }))
  c.requests++
  if (status >= 500) c.errors++
}
