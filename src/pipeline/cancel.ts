// Cancellation for a request and for each of its attempts. AbortController/AbortSignal would do,
// but they are EventTargets, and even an EventEmitter costs more to create and to listen on than
// a request can afford (every request makes one, every attempt another): this is the few lines
// that are needed, a flag, a reason and a list of listeners.
//
// A listener on the hot path is an object with a `cancelled` method (an attempt's own Cancel, an
// upstream exchange), added and removed as itself: no closure per request for either. Paths that
// run rarely use `onAbort` with a function.

/** What a Cancel tells when it aborts. */
export interface CancelListener {
  cancelled(reason: unknown): void
}

export class Cancel implements CancelListener {
  aborted = false
  reason: unknown = undefined
  private listeners: Array<CancelListener | ((reason: unknown) => void)> | undefined

  /** Aborts once; later calls do nothing. */
  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const listeners = this.listeners
    this.listeners = undefined
    if (listeners) for (const l of listeners) typeof l === 'function' ? l(reason) : l.cancelled(reason)
  }

  /** As a listener of another Cancel (a request's): aborts with it. */
  cancelled(reason: unknown): void {
    this.abort(reason)
  }

  /** Tells `listener` when aborted (at once if already). */
  add(listener: CancelListener): void {
    if (this.aborted) listener.cancelled(this.reason)
    else (this.listeners ??= []).push(listener)
  }

  /** Forgets `listener` (or a function given to onAbort). */
  remove(listener: CancelListener | ((reason: unknown) => void)): void {
    const listeners = this.listeners
    const i = listeners ? listeners.indexOf(listener) : -1
    if (i !== -1) listeners!.splice(i, 1)
  }

  /** Runs `fn` when aborted (at once if already); returns the function that unregisters it. */
  onAbort(fn: (reason: unknown) => void): () => void {
    if (this.aborted) {
      fn(this.reason)
      return noop
    }
    ;(this.listeners ??= []).push(fn)
    return () => this.remove(fn)
  }
}

function noop(): void {}
