// Cancellation for a request and for each of its attempts. AbortController/AbortSignal would do,
// but they are EventTargets, and even an EventEmitter costs more to create and to listen on than
// a request can afford (every request makes one, every attempt another): this is the few lines
// that are needed, a flag, a reason and a list of callbacks.

export class Cancel {
  aborted = false
  reason: unknown = undefined
  private callbacks: Array<(reason: unknown) => void> | undefined

  /** Aborts once; later calls do nothing. */
  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const callbacks = this.callbacks
    this.callbacks = undefined
    if (callbacks) for (const fn of callbacks) fn(reason)
  }

  /** Runs `fn` when aborted (at once if already); returns the function that unregisters it. */
  onAbort(fn: (reason: unknown) => void): () => void {
    if (this.aborted) {
      fn(this.reason)
      return noop
    }
    ;(this.callbacks ??= []).push(fn)
    return () => {
      const callbacks = this.callbacks
      const i = callbacks ? callbacks.indexOf(fn) : -1
      if (i !== -1) callbacks!.splice(i, 1)
    }
  }
}

function noop(): void {}
