// Time, injectable: layers that wait or count per second take a Clock so tests can run them
// without real delays.
import type { Cancel } from './pipeline/cancel.js'

export interface Clock {
  /** Milliseconds, monotonic enough for intervals (Date.now in production). */
  now(): number
  /** Resolves after `ms`; rejects with `signal.reason` if the signal aborts first. */
  sleep(ms: number, signal?: Cancel): Promise<void>
  /** Calls `fn` after `ms` unless cancelled; returns the cancel function. */
  timeout(ms: number, fn: () => void): () => void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  timeout(ms, fn) {
    const timer = setTimeout(fn, ms)
    return () => clearTimeout(timer)
  },
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason)
      const timer = setTimeout(() => {
        unregister?.()
        resolve()
      }, ms)
      const unregister = signal?.onAbort((reason) => {
        clearTimeout(timer)
        reject(reason)
      })
    }),
}
