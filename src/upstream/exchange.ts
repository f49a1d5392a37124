// One exchange with the app: undici's dispatch handler, from the request's hand-over to the
// response's last byte. It knows undici's handler interface, not undici itself (the pool that
// calls it is upstream/client.ts's).
import type { Duplex } from 'node:stream'
import { Readable } from 'node:stream'
import { SidecarError } from '../errors.js'
import { endToEndRaw, type HeaderName } from '../headers.js'
import type { BufferBudget, BufferHolder } from '../pipeline/buffers.js'
import type { Place } from '../pipeline/holders.js'
import { KEEPS_UP } from '../pipeline/pressure.js'
import type { Cancel, CancelListener } from '../pipeline/cancel.js'
import type { ClientProgress, HeaderMap, ProxyResponse, Reply } from '../pipeline/types.js'

/** What every exchange of a pool shares. */
export interface ExchangeOptions {
  /** How far an answer may be read ahead of a slow client (limits.responseBufferBytes), and the
   *  budget of all buffers it is taken from. */
  readAhead: { bytes: number; budget: BufferBudget | undefined }
  /** Raw header names to lower-cased strings (undici's own, from the upstream client). */
  headerName: HeaderName
}

/**
 * undici's dispatch handler for one exchange, resolving at the response's headers with the body
 * behind them. It stands in for undici's `request()` and `upgrade()`: the former loses HTTP/2
 * trailers (gRPC's status), the latter refuses any answer but a 101, and a refusal such as a 401
 * is the app's to pass on. The signal cancels the exchange until its headers came; after that,
 * destroying the body does.
 *
 * The answer is handed on a microtask after its headers: undici's parser calls onHeaders,
 * onData and onComplete in one go for what arrived in one read, so a typical small answer is
 * complete by then and goes on as one Buffer, with no stream, pipe or listeners for it (most of
 * what a forwarded request costs beyond the bare minimum). A longer one goes on as a Readable
 * that streams the rest with backpressure (undici pauses while the body's buffer is full).
 */
export class Exchange implements CancelListener, BufferHolder {
  private body: Readable | null = null
  /** Made when trailers come, or for a streamed body (they come after the hand-over). */
  private trailers: Record<string, string | string[]> | undefined = undefined
  private abort: (reason?: Error) => void = noop
  private settled = false
  /** Bytes read ahead of the client, past the body's own buffer, taken from the budget. */
  private ahead = 0
  /** Its place among the budget's holders while it reads ahead. */
  private aheadPlace: Place<BufferHolder> | undefined = undefined
  /** Bytes of the answer still to come from the app, when its length was declared. */
  private left = Infinity
  private watchingEnd = false
  /** Between the headers and the hand-over: the answer so far. */
  private head: { status: number; headers: HeaderMap; resume: () => void; chunk: Buffer | null; more: Buffer[] | null; ended: boolean; error?: Error } | null = null

  /** `progress`: the client's, for whom the answer is read ahead (none: no read-ahead). */
  constructor(
    private readonly method: string,
    private readonly signal: Cancel,
    private readonly reply: Reply,
    private readonly opts: ExchangeOptions,
    readonly progress: ClientProgress = KEEPS_UP,
  ) {
    signal.add(this)
  }

  /** Bytes read ahead of the client, taken from the budget (BufferHolder). */
  get held(): number {
    return this.ahead
  }

  /** The signal aborted before the answer's headers. Still waiting for a pooled connection: it
   *  fails now, and is dropped when its turn comes (onConnect); its deadline passing there is
   *  no fault of the app's. Under way: undici aborts it. */
  cancelled(reason: unknown): void {
    if (this.abort !== noop) return this.abort(reason as Error)
    this.settled = true
    const timedOut = (reason as { code?: unknown } | null)?.code === 'upstream_timeout'
    this.reply.fail(timedOut ? new SidecarError('upstream_busy', { cause: reason, detail: 'every pooled connection stayed in use' }) : reason)
  }

  onConnect(abort: (reason?: Error) => void): void {
    if (this.settled) return abort(new SidecarError('client_closed'))
    this.abort = abort
  }

  onUpgrade(status: number, rawHeaders: Array<Buffer | string> | null, socket: Duplex): void {
    this.settle({ status, headers: endToEndRaw(rawHeaders, this.opts.headerName), body: null, tunnel: socket })
  }

  onHeaders(status: number, rawHeaders: Array<Buffer | string> | null, resume: () => void): boolean {
    if (status < 200) return true // 1xx: the final answer follows
    const headers = endToEndRaw(rawHeaders, this.opts.headerName)
    // gRPC's status in the headers: a "trailers-only" answer, whose one frame ends the stream
    if (hasNoBody(this.method, status) || headers['grpc-status'] !== undefined) {
      // A 304 may carry the Content-Length of the representation it stands for (RFC 9110
      // 8.6), and undici 7 then fails the empty body as a length mismatch (closing that
      // connection); stray bytes after a 204/304 do the same. Neither may cost the client its
      // answer: relay the headers, and what undici says next goes nowhere.
      this.settle({ status, headers, body: null })
      return true
    }
    this.head = { status, headers, resume, chunk: null, more: null, ended: false }
    queueMicrotask(() => this.handOver())
    return true
  }

  /** The answer goes on: whole as a Buffer when it already ended, else as a stream. */
  private handOver(): void {
    const head = this.head!
    this.head = null
    const { status, headers, chunk, more } = head
    if (head.ended) {
      const body = more !== null ? Buffer.concat(more) : (chunk ?? EMPTY)
      return this.settle({ status, headers, body, trailers: this.trailers })
    }
    const resume = head.resume
    // the chunks that came with the headers are counted off as onData passes them on below
    const declared = Number(headers['content-length'])
    if (Number.isSafeInteger(declared)) this.left = declared
    this.body = new Readable({
      read: () => {
        this.giveBack() // below its own buffer again: what was read ahead has gone to the client
        resume()
      },
      destroy: (err, done) => {
        this.giveBack()
        if (!this.body?.readableEnded) this.abort(err ?? new SidecarError('client_closed'))
        done(err)
      },
    })
    this.settle({ status, headers, body: this.body, trailers: (this.trailers ??= {}) })
    if (more !== null) for (const c of more) this.onData(c)
    else if (chunk !== null) this.onData(chunk)
    if (head.error) this.body.destroy(head.error)
  }

  /**
   * A chunk from the app. Past the body's own buffer (a client reading slower than the app
   * writes), the app is still read from while this response's read-ahead stays within its
   * limit and the budget for all buffers allows: a typical answer is then read whole, and the
   * app's connection freed, however slow the client. Beyond that, the app waits (backpressure).
   * An answer whose declared rest cannot fit is not read ahead at all: the app's connection
   * would stay held all the same, and the bytes would be memory spent on a slow client for
   * nothing (a thousand slow readers of a 1 MiB answer held 32 MiB of read-ahead so).
   */
  onData(chunk: Buffer): boolean {
    const head = this.head
    if (head) {
      // what one read brought: in memory already (one chunk, the usual case, or a list)
      if (head.chunk === null) head.chunk = chunk
      else (head.more ??= [head.chunk]).push(chunk)
      return true
    }
    const body = this.body
    if (!body) return true
    this.left -= chunk.length
    if (body.push(chunk)) return true
    const { bytes, budget } = this.opts.readAhead
    if (this.ahead + chunk.length + (this.left === Infinity ? 0 : this.left) > bytes || !budget?.take(chunk.length)) return false
    if (!this.watchingEnd) {
      this.watchingEnd = true
      body.once('end', () => this.giveBack()) // the rest may be read without another read()
    }
    if (this.ahead === 0) this.aheadPlace = budget.hold(this)
    this.ahead += chunk.length
    return true
  }

  private giveBack(): void {
    if (this.ahead === 0) return
    const budget = this.opts.readAhead.budget!
    budget.give(this.ahead)
    budget.released(this.aheadPlace!)
    this.ahead = 0
  }

  /** HTTP/1.1 trailers come as raw pairs (Buffers), HTTP/2 trailers as an object. */
  onComplete(trailers: Array<Buffer | string> | Record<string, string | string[]> | null): void {
    if (trailers) Object.assign((this.trailers ??= {}), Array.isArray(trailers) ? endToEndRaw(trailers, this.opts.headerName) : trailers)
    if (this.head) this.head.ended = true
    else this.body?.push(null)
  }

  onError(err: Error): void {
    if (this.head) this.head.error = err
    else if (!this.settled) {
      this.settled = true
      this.signal.remove(this)
      this.reply.fail(err)
    } else this.body?.destroy(err)
  }

  private settle(response: ProxyResponse): void {
    this.settled = true
    this.signal.remove(this)
    this.reply.ok(response)
  }
}

/** RFC 9110 6.4.1: answers to HEAD, and 1xx, 204 and 304 answers, have no content. */
function hasNoBody(method: string, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304 || status < 200
}

function noop(): void {}

const EMPTY = Buffer.alloc(0)
