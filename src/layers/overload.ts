// Overload: per backend, at most maxConcurrentRequests attempts in flight (until the response
// body is done) and at most maxPendingRequests waiting for a slot. Past both, the attempt fails
// at once with 503 overloaded: never an unbounded queue. A waiting attempt gives up when its
// signal aborts: the client left or the attempt's deadline passed. Waiting attempts are served
// by client connection in turn, and a full queue makes room for a newcomer by turning away the
// newest waiter of the connection waiting most. With every slot taken, the
// slot held longest by a client that reads nothing of its answer (or sends its body slower than
// the minimum rate) is freed for the newcomer: its exchange is evicted (pipeline/pressure.ts),
// so slow readers cannot hold the app's every slot while honest requests wait.
import type { Clock } from '../clock.js'
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Cancel } from '../pipeline/cancel.js'
import { pass } from '../pipeline/compose.js'
import type { Place } from '../pipeline/holders.js'
import { mostStalled } from '../pipeline/pressure.js'
import type { ClientProgress, Layer, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'
import type { Gate, Waiter } from '../upstream/gate.js'

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
    const most = opts.maxConcurrentRequests
    gate.most = most
    if (gate.active < Math.min(most, gate.limit)) {
      gate.active++
      return pass(next, req, ctx, new Slot(gate, ctx, reply, most))
    }
    // the freed slot passes to the next in line (Slot.release)
    const stalled = mostStalled(gate.holders, deps.clock.now())
    if (stalled) {
      gate.holders.remove(stalled)
      stalled.holder.progress.evict('requests')
    }
    // held back by the backend's concurrency limit (its capacity), or by limits.maxConcurrentRequests
    const code = gate.limit < most ? 'concurrency_limited' : 'overloaded'
    const overloaded = () => {
      deps.metrics.countRejection(code)
      const limit = code === 'concurrency_limited' ? ` (its concurrency limit is ${gate.limit})` : ''
      return new SidecarError(code, { detail: `${gate.active} in flight${limit} and ${gate.waiting} waiting for backend ${backend}`, retryAfterSeconds: 1 })
    }
    if (gate.waiting >= opts.maxPendingRequests) {
      // The queue is full: the connection waiting most gives up its newest place to a newcomer
      // from a connection waiting less; else the newcomer is turned away.
      const busiest = gate.busiest()
      if (!busiest || busiest[1].length <= gate.waitingOn(ctx.connection) + 1) return reply.fail(overloaded())
      const [connection, queue] = busiest
      const turnedAway = queue[queue.length - 1]!
      gate.leave(connection, turnedAway)
      turnedAway.refuse(overloaded())
    }
    waitForSlot(gate, ctx.connection, ctx.attemptSignal, deps.clock, overloaded).then(
      () => pass(next, req, ctx, new Slot(gate, ctx, reply, most)),
      (err: unknown) => reply.fail(err),
    )
  }
}

/** An attempt's slot, held until its response body is done or it failed. */
class Slot implements Reply {
  private held = true
  readonly progress: ClientProgress
  private readonly place: Place<{ readonly progress: ClientProgress }>

  /** performance.now() when the slot was taken, for an adaptive concurrency limit (the
   *  latency it follows); 0 without one. */
  private readonly start: number

  /** `most`: limits.maxConcurrentRequests, the ceiling besides the backend's concurrency limit. */
  constructor(
    private readonly gate: Gate,
    ctx: RequestContext,
    private readonly up: Reply,
    private readonly most: number,
  ) {
    this.progress = ctx.progress
    this.place = gate.holders.add(this)
    this.start = gate.limiter === undefined ? 0 : performance.now()
  }

  ok(response: ProxyResponse): void {
    this.gate.limiter?.sample(performance.now() - this.start, this.gate.active)
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
    const gate = this.gate
    gate.holders.remove(this.place)
    // the slot passes straight to the next in line, unless the limit has come down meanwhile
    const waiter = gate.active <= Math.min(this.most, gate.limit) ? gate.next() : undefined
    if (waiter) waiter.take()
    else gate.active--
  }
}

/** Queues for a slot, in its connection's line; gives up when the attempt's signal aborts
 *  (client gone, or deadline), after the backend's concurrency.maxWaitMs (`tooLong`'s error),
 *  or when turned away for a newcomer (the queue full). */
function waitForSlot(gate: Gate, connection: object, signal: Cancel, clock: Clock, tooLong: () => Error): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason)
    const done = () => {
      unregister()
      stopTimer?.()
    }
    const waiter: Waiter = {
      take: () => {
        done()
        resolve()
      },
      refuse: (err) => {
        done()
        reject(err)
      },
    }
    const giveUp = (reason: unknown) => {
      done()
      gate.leave(connection, waiter)
      reject(reason)
    }
    const unregister = signal.onAbort(giveUp)
    const stopTimer = gate.maxWaitMs > 0 ? clock.timeout(gate.maxWaitMs, () => giveUp(tooLong())) : undefined
    gate.wait(connection, waiter)
  })
}
