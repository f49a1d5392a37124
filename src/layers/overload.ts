// Overload: per backend, at most maxConcurrentRequests attempts in flight (until the response
// body is done) and at most maxPendingRequests waiting for a slot. Past both, the attempt fails
// at once with 503 overloaded: never an unbounded queue. A waiting attempt gives up when its
// signal aborts: the client left or the attempt's deadline passed.
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Cancel } from '../pipeline/cancel.js'
import { callNext } from '../pipeline/compose.js'
import type { Handler, Layer, ProxyRequest, ProxyResponse, RequestContext } from '../pipeline/types.js'
import type { Gate } from '../upstream/backends.js'

export interface OverloadOptions {
  maxConcurrentRequests: number
  maxPendingRequests: number
}

/** `gateOf`: the backend's count of attempts in flight and waiting (none: the backend is gone). */
export function createOverloadLayer(opts: OverloadOptions, deps: { metrics: Metrics; gateOf: (backend: string) => Gate | undefined }): Layer {
  const reject = (detail: string): Promise<never> => {
    deps.metrics.countRejection('overloaded')
    return Promise.reject(new SidecarError('overloaded', { detail, retryAfterSeconds: 1 }))
  }
  const release = (gate: Gate) => {
    const waiter = gate.waiting.shift()
    if (waiter) waiter() // the slot passes straight to the next in line
    else gate.active--
  }

  /** The attempt, in a slot it holds until the response body is done. */
  const inSlot = (gate: Gate, next: Handler, req: ProxyRequest, ctx: RequestContext): Promise<ProxyResponse> => {
    return callNext(next, req, ctx).then(
      (response) => {
        const body = response.body
        if (body === null || Buffer.isBuffer(body)) release(gate)
        else body.once('close', () => release(gate))
        return response
      },
      (err: unknown) => {
        release(gate)
        throw err
      },
    )
  }

  return (next) => (req, ctx) => {
    const backend = ctx.backend ?? 'none'
    const gate = deps.gateOf(backend)
    if (!gate) return next(req, ctx)
    if (gate.active < opts.maxConcurrentRequests) {
      gate.active++
      return inSlot(gate, next, req, ctx)
    }
    if (gate.waiting.length < opts.maxPendingRequests) return waitForSlot(gate, ctx.attemptSignal).then(() => inSlot(gate, next, req, ctx))
    return reject(`${gate.active} in flight and ${gate.waiting.length} waiting for backend ${backend}`)
  }
}

/** Queues for a slot; gives up when the attempt's signal aborts (client gone, or deadline). */
function waitForSlot(gate: Gate, signal: Cancel): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason)
    const take = () => {
      unregister()
      resolve()
    }
    const unregister = signal.onAbort((reason) => {
      gate.waiting.splice(gate.waiting.indexOf(take), 1)
      reject(reason)
    })
    gate.waiting.push(take)
  })
}
