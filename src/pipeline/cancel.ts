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

type Listener = CancelListener | ((reason: unknown) => void)

export class Cancel implements CancelListener {
  aborted = false
  reason: unknown = undefined
  /** The usual case is one listener at a time (an attempt on its request, an exchange on its
   *  attempt): it is kept in a field, and a list is made only for more. */
  private first: Listener | undefined = undefined
  private more: Listener[] | undefined = undefined

  /** Aborts once; later calls do nothing. */
  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const { first, more } = this
    this.first = this.more = undefined
    if (first) tell(first, reason)
    if (more) for (const l of more) tell(l, reason)
  }

  /** As a listener of another Cancel (a request's): aborts with it. */
  cancelled(reason: unknown): void {
    this.abort(reason)
  }

  /** Tells `listener` when aborted (at once if already). */
  add(listener: CancelListener): void {
    this.listen(listener)
  }

  /** Forgets `listener` (or a function given to onAbort). */
  remove(listener: Listener): void {
    if (this.first === listener) this.first = undefined
    else {
      const more = this.more
      const i = more ? more.indexOf(listener) : -1
      if (i !== -1) more!.splice(i, 1)
    }
  }

  /** Runs `fn` when aborted (at once if already); returns the function that unregisters it. */
  onAbort(fn: (reason: unknown) => void): () => void {
    if (!this.listen(fn)) return noop
    return () => this.remove(fn)
  }

  /** False when already aborted (the listener was told at once). */
  private listen(listener: Listener): boolean {
    if (this.aborted) {
      tell(listener, this.reason)
      return false
    }
    if (this.first === undefined) this.first = listener
    else (this.more ??= []).push(listener)
    return true
  }
}

function tell(listener: Listener, reason: unknown): void {
  if (typeof listener === 'function') listener(reason)
  else listener.cancelled(reason)
}

function noop(): void {}
