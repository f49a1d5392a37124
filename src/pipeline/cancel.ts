// Cancellation for a request and for each of its attempts. AbortController/AbortSignal would do,
// but they are EventTargets: creating them and adding listeners took about 8% of the proxy's
// CPU per request in a profile. undici accepts any EventEmitter with `aborted`, `reason` and an
// 'abort' event as a request signal, and so does everything here.
import { EventEmitter } from 'node:events'

export class Cancel extends EventEmitter<{ abort: [reason: unknown] }> {
  aborted = false
  reason: unknown = undefined

  /** Aborts once; later calls do nothing. */
  abort(reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    this.emit('abort', reason)
  }

  /** Runs `fn` when aborted (at once if already); returns the function that unregisters it. */
  onAbort(fn: (reason: unknown) => void): () => void {
    if (this.aborted) {
      fn(this.reason)
      return noop
    }
    this.once('abort', fn)
    return () => this.removeListener('abort', fn)
  }
}

function noop(): void {}
