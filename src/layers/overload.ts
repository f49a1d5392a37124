// Overload: per backend, at most maxConcurrentRequests attempts in flight (until the response
// body is done) and at most maxPendingRequests waiting for a slot. Past both, the attempt fails
// at once with 503 overloaded: never an unbounded queue. A waiting attempt gives up when its
// signal aborts: the client left or the attempt's deadline passed. With every slot taken, the
// slot held longest by a client that reads nothing of its answer (or sends its body slower than
// the minimum rate) is freed for the newcomer: its exchange is evicted (pipeline/pressure.ts),
// so slow readers cannot hold the app's every slot while honest requests wait.
import type { Clock } from '../clock.js'
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Cancel } from '../pipeline/cancel.js'
import { pass } from '../pipeline/compose.js'
import { mostStalled } from '../pipeline/pressure.js'
import type { ClientProgress, Layer, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'
import type { Gate } from '../upstream/backends.js'

export interface OverloadOptions {
  maxConcurrentRequests: number
  maxPendingRequests: number
}

/** `gateOf`: the backend's count of attempts in flight and waiting (none: the backend is gone). */
export function createOverloadLayer(opts: OverloadOptions, deps: { metrics: Metrics; clock: Clock; gateOf: (backend: string) => Gate | undefined }): Layer {
  return (next) => (req, ctx, reply) => {
    const backend = ctx.backend ?? 'none'
    const gate = deps.gateOf(backend)
    if (!gate) return next(req, ctx, reply)
    if (gate.active < opts.maxConcurrentRequests) {
      gate.active++
      return pass(next, req, ctx, new Slot(gate, ctx, reply))
    }
    // the freed slot passes to the first in line (Slot.release)
    const stalled = mostStalled(gate.holders, deps.clock.now())
    if (stalled) {
      gate.holders.delete(stalled)
      stalled.progress.evict('requests')
    }
    if (gate.waiting.length < opts.maxPendingRequests) {
      return void waitForSlot(gate, ctx.attemptSignal).then(
        () => pass(next, req, ctx, new Slot(gate, ctx, reply)),
        (err: unknown) => reply.fail(err),
      )
    }
    deps.metrics.countRejection('overloaded')
    reply.fail(new SidecarError('overloaded', { detail: `${gate.active} in flight and ${gate.waiting.length} waiting for backend ${backend}`, retryAfterSeconds: 1 }))
  }
}

/** An attempt's slot, held until its response body is done or it failed. */
class Slot implements Reply {
  private held = true
  readonly progress: ClientProgress

  constructor(
    private readonly gate: Gate,
    ctx: RequestContext,
    private readonly up: Reply,
  ) {
    this.progress = ctx.progress
    gate.holders.add(this)
  }

  ok(response: ProxyResponse): void {
    const body = response.body
    if (body === null || Buffer.isBuffer(body)) this.release()
    else body.once('close', () => this.release())
    this.up.ok(response)
  }

  fail(err: unknown): void {
    this.release()
    this.up.fail(err)
  }

  private release(): void {
    if (!this.held) return
    this.held = false
    this.gate.holders.delete(this)
    const waiter = this.gate.waiting.shift()
    if (waiter) waiter() // the slot passes straight to the next in line
    else this.gate.active--
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
