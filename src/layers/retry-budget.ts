// The retry budget (Finagle's RetryBudget, Linkerd's retry budgets): every request deposits
// `ratio` of a retry, every retry withdraws one, over a sliding window, plus a floor of
// `minPerSecond` so that a quiet proxy can still retry. When an upstream fails every request,
// attempts stay within (1 + ratio) x requests + minPerSecond x window: retries cannot turn an
// outage into a retry storm.
import type { Clock } from '../clock.js'

export interface RetryBudgetOptions {
  ratio: number
  minPerSecond: number
  windowMs: number
}

const BUCKETS = 10

export class RetryBudget {
  private readonly bucketMs: number
  private readonly deposits = new Array<number>(BUCKETS).fill(0)
  private readonly withdrawals = new Array<number>(BUCKETS).fill(0)
  private bucketStart: number
  private current = 0

  constructor(
    private readonly opts: RetryBudgetOptions,
    private readonly clock: Clock,
  ) {
    this.bucketMs = opts.windowMs / BUCKETS
    this.bucketStart = clock.now()
  }

  /** One original request. */
  deposit(): void {
    this.advance()
    this.deposits[this.current]!++
  }

  /** Takes one retry from the budget if there is one. */
  tryWithdraw(): boolean {
    if (this.balance() < 1) return false
    this.withdrawals[this.current]!++
    return true
  }

  /** Retries available now. */
  balance(): number {
    this.advance()
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0)
    const floor = (this.opts.minPerSecond * this.opts.windowMs) / 1000
    return floor + this.opts.ratio * sum(this.deposits) - sum(this.withdrawals)
  }

  /** Moves the window forward, clearing the buckets that fell out of it. */
  private advance(): void {
    const elapsed = Math.floor((this.clock.now() - this.bucketStart) / this.bucketMs)
    if (elapsed <= 0) return
    for (let i = 1; i <= Math.min(elapsed, BUCKETS); i++) {
      const slot = (this.current + i) % BUCKETS
      this.deposits[slot] = 0
      this.withdrawals[slot] = 0
    }
    this.current = (this.current + elapsed) % BUCKETS
    this.bucketStart += elapsed * this.bucketMs
  }
}
