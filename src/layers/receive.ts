// Receive: a request body up to limits.requestBufferBytes is read whole before the request goes
// on, so a client that sends it slowly holds no connection to the app, and the deadlines that
// follow measure the app alone (nginx's proxy_request_buffering, on by default). Larger bodies,
// and gRPC's (a streaming call never ends while it waits for answers), stream as they come. A
// body with no byte for limits.bodyIdleTimeoutMs fails with 408 request_timeout: the client's
// doing, never the app's.
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import type { Clock } from '../clock.js'
import { SidecarError, isErrorCode } from '../errors.js'
import type { BufferBudget } from '../pipeline/buffers.js'
import { isGrpc } from '../pipeline/local-reply.js'
import { pass } from '../pipeline/compose.js'
import type { Handler, Layer, ProxyRequest, Reply, RequestContext } from '../pipeline/types.js'

export interface ReceiveOptions {
  requestBufferBytes: number
  bodyIdleTimeoutMs: number
}

export function createReceiveLayer(opts: ReceiveOptions, deps: { clock: Clock; buffers: BufferBudget }): Layer {
  const idle = () => new SidecarError('request_timeout', { detail: `no byte of the body for limits.bodyIdleTimeoutMs (${opts.bodyIdleTimeoutMs} ms)` })
  // a request without a body (most) passes at the cost of one call
  return (next) => (req, ctx, reply) => (req.body === null || Buffer.isBuffer(req.body) ? next(req, ctx, reply) : receive(req, ctx, next, reply))
  function receive(req: ProxyRequest, ctx: RequestContext, next: Handler, reply: Reply): void {
    const body = req.body as Readable
    const declared = req.contentLength
    const room = declared ?? opts.requestBufferBytes
    if (isGrpc(req.headers['content-type']) || room > opts.requestBufferBytes || room === 0 || !deps.buffers.take(room)) {
      return next({ ...req, body: guarded(body, new IdleGuard(opts.bodyIdleTimeoutMs, deps.clock, idle), ctx) }, ctx, reply)
    }
    ctx.onEnd.push(() => deps.buffers.give(room))
    // while the body comes, its client may be evicted for the room it holds (a body behind the
    // minimum rate, at the buffer ceiling: pipeline/pressure.ts)
    const held = deps.buffers.hold({ progress: ctx.progress, held: room })
    readUpTo(body, opts.requestBufferBytes, opts.bodyIdleTimeoutMs, deps.clock, idle).then(
      ({ chunks, complete }) => {
        deps.buffers.released(held)
        if (complete) return pass(next, { ...req, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks) }, ctx, reply)
        // a chunked body past the buffer: what was read, then the rest as it comes
        pass(next, { ...req, body: guarded(body, new IdleGuard(opts.bodyIdleTimeoutMs, deps.clock, idle, chunks), ctx) }, ctx, reply)
      },
      // the client went away mid-body, or the limits layer cut it (body_too_large)
      (err: unknown) => {
        deps.buffers.released(held)
        reply.fail(isErrorCode((err as { code?: unknown }).code) ? err : new SidecarError('client_closed', { cause: err }))
      },
    )
  }
}

/**
 * `body` through `guard`: the body's errors reach the guard's reader. When the guard fails, the
 * body is left paused, not destroyed: destroying a request destroys its socket, and the client
 * is owed its answer (408, with Connection: close). The guard (and its timer) ends with the
 * request, whether or not the app read the body.
 */
function guarded(body: Readable, guard: IdleGuard, ctx: RequestContext): Readable {
  body.once('error', (err) => guard.destroy(err))
  guard.once('error', () => body.unpipe(guard).pause())
  ctx.onEnd.push(() => guard.destroy())
  return body.pipe(guard)
}

/** Reads up to `max` bytes (or the whole body, if smaller), failing when no byte comes for `idleMs`. */
export function readUpTo(body: Readable, max: number, idleMs: number, clock: Clock, idle: () => Error): Promise<{ chunks: Buffer[]; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let lastAt = clock.now()
    let stopTimer = clock.timeout(idleMs, check)
    function check() {
      const quiet = clock.now() - lastAt
      if (quiet < idleMs) stopTimer = clock.timeout(idleMs - quiet, check)
      else fail(idle())
    }
    const finish = () => {
      stopTimer()
      body.off('data', onData).off('end', onEnd).off('error', fail)
    }
    const onData = (chunk: Buffer) => {
      lastAt = clock.now()
      chunks.push(chunk)
      size += chunk.length
      if (size > max) {
        body.pause()
        finish()
        resolve({ chunks, complete: false })
      }
    }
    const onEnd = () => {
      finish()
      resolve({ chunks, complete: true })
    }
    function fail(err: Error) {
      finish()
      body.pause() // left to the socket's close: destroying the request would cut its answer
      reject(err)
    }
    body.on('data', onData).on('end', onEnd).on('error', fail)
  })
}

/**
 * Passes a streamed body on (after `first`, what was read of it already), failing it when the
 * client sends nothing for `idleMs` while nothing waits to go on (a body held up by a slow app is
 * the app's doing, not the client's).
 */
class IdleGuard extends Transform {
  private lastAt: number
  private stopTimer: () => void

  constructor(
    private readonly idleMs: number,
    private readonly clock: Clock,
    private readonly idle: () => Error,
    first: Buffer[] = [],
  ) {
    super()
    for (const chunk of first) this.push(chunk)
    this.lastAt = clock.now()
    this.stopTimer = clock.timeout(idleMs, () => this.check())
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.lastAt = this.clock.now()
    done(null, chunk)
  }

  override _flush(done: TransformCallback): void {
    this.stopTimer()
    done()
  }

  override _destroy(err: Error | null, done: (error?: Error | null) => void): void {
    this.stopTimer()
    done(err)
  }

  private check(): void {
    const backedUp = this.readableLength > 0 || this.writableLength > 0
    const quiet = this.clock.now() - this.lastAt
    if (backedUp || quiet < this.idleMs) this.stopTimer = this.clock.timeout(backedUp ? this.idleMs : this.idleMs - quiet, () => this.check())
    else this.destroy(this.idle())
  }
}
