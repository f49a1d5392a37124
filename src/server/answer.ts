// A request in flight on the listener, from its arrival to its response's close: its way back
// from the pipeline (a Reply), how its client keeps up (the ceilings of pipeline/pressure.ts
// evict the most stalled), and what it holds while its client takes nothing.
import type http from 'node:http'
import http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { BufferBudget, BufferHolder } from '../pipeline/buffers.js'
import { BODY_MIN_RATE } from '../pipeline/pressure.js'
import type { ClientProgress, ProxyRequest, ProxyResponse, Reply, RequestContext, Resource } from '../pipeline/types.js'
import type { Http1Conn } from './connections.js'
import type { Request, Response, Stall } from './translate.js'

/** What an answer reports to: the listener. */
export interface AnswerOwner {
  /** Its response closed (sent whole, or cut short). */
  closed(answer: Answer): void
  /** The pipeline's answer, to write to its client. */
  answer(answer: Answer, response: ProxyResponse): void
  /** The pipeline failed it (a bug): its client is cut. */
  broken(err: unknown, ctx: RequestContext, client: { destroy(): unknown }): void
  /** The ceiling for bytes held for slow peers, which a stalled answer's are charged to. */
  readonly buffers: BufferBudget | undefined
  /** It was cut to make room at a ceiling. */
  evicted(resource: Resource, reason: 'slow_reader' | 'slow_body', ctx: RequestContext): void
}

/**
 * A request in flight on the listener: its way back from the pipeline (the answer, written to
 * its client), the end of its response (`closed`, the response's close listener), and how its
 * client keeps up (`stalledFor`: the ceilings of pipeline/pressure.ts evict the most stalled).
 */
export class Answer implements Reply, ClientProgress, Stall, BufferHolder {
  readonly closed = () => this.listener.closed(this)
  ctx!: RequestContext
  proxyReq!: ProxyRequest
  /** The HTTP/1 connection's state; undefined on HTTP/2. */
  conn: Http1Conn | undefined = undefined
  /** When its client stopped taking its streamed answer (0: it takes it). */
  pausedAt = 0
  /** While it has stopped: the bytes its body and connection hold, charged to the buffers. */
  held = 0
  /** The budget's record of that charge (pipeline/buffers.ts), declared here so that every
   *  answer has one shape. */
  charged: BufferHolder['charged'] = undefined
  /** Its response has closed (or its connection, before the response had it). */
  ended = false
  /** Cut to make room at a ceiling. */
  evicted = false
  /** HTTP/1, pipelined: begins once the requests before it on its connection are answered. */
  waiting: (() => void) | undefined = undefined

  constructor(
    private readonly listener: AnswerOwner,
    readonly req: Request,
    readonly res: Response,
    /** The HTTP/1 connection; undefined on HTTP/2. */
    readonly http1: Socket | undefined,
    /** The clock's time at its arrival. */
    private readonly arrivedAt: number,
  ) {}

  ok(response: ProxyResponse): void {
    try {
      this.listener.answer(this, response)
    } catch (err) {
      this.fail(err)
    }
  }

  fail(err: unknown): void {
    this.listener.broken(err, this.ctx, this.res)
  }

  /** Not reading its answer: since it stopped. Sending its body (HTTP/1) while the proxy waits
   *  for it: how far it is behind BODY_MIN_RATE since it arrived. */
  stalledFor(now: number): number {
    if (this.pausedAt > 0) return now - this.pausedAt
    const socket = this.http1
    const req = this.req as http.IncomingMessage
    if (socket === undefined || req.complete || req.readableLength > 0) return 0
    const bytes = socket.bytesRead - this.conn!.read
    return Math.max(0, now - this.arrivedAt - (bytes * 1000) / BODY_MIN_RATE)
  }

  /** As a BufferHolder: it is its own client's progress. */
  get progress(): ClientProgress {
    return this
  }

  /** Its client stopped taking its streamed answer (Stall): what the answer holds on its way is
   *  charged to the ceiling for bytes held for slow peers (pipeline/buffers.ts). */
  stopped(at: number, held: number): void {
    const buffers = this.listener.buffers
    buffers?.discharge(this)
    this.pausedAt = at
    this.held = held
    buffers?.charge(this)
  }

  goesOn(): void {
    this.pausedAt = 0
    this.listener.buffers?.discharge(this)
  }

  /** Its connection closed while it waited behind a pipelined request: its response never got
   *  the connection and Node never closes it. It is closed here, so that what waits on its
   *  close (its slot, its app request, its access line) does not wait for ever. */
  connectionLost(): void {
    if (this.ended) return
    ;(this.res as http.ServerResponse).destroy()
    this.res.emit('close')
  }

  evict(resource: Resource): void {
    // once: its read-ahead and its own charge may both be picked at the buffers' ceiling
    if (this.evicted) return
    this.evicted = true
    this.listener.buffers?.discharge(this)
    if (this.ctx.error === undefined || this.ctx.error === 'client_closed') this.ctx.error = 'client_slow'
    this.listener.evicted(resource, this.pausedAt > 0 ? 'slow_reader' : 'slow_body', this.ctx)
    if (this.http1) this.http1.destroy()
    else (this.res as http2.ServerHttp2Stream).close(http2.constants.NGHTTP2_CANCEL)
  }
}
