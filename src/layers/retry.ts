// Retry: another try when a try failed in a way that is safe and likely to help, within a
// budget that keeps retries from multiplying an outage.
//
// - Only before any response byte went to the client: a response is retried only while it is
//   still in this layer's hands; once returned, it is the client's.
// - Only what can be sent again: bodies up to maxReplayBytes are kept in memory; a larger body
//   streams through and its request is never retried.
// - Only idempotent requests (retry.methods, or any method with an Idempotency-Key header), except
//   when the failure's catalogue entry says the app never got it (a connection refused or never
//   made). Which failures are retried at all is the catalogue's `retryOn` (src/errors.ts).
// - Exponential backoff with full jitter; a Retry-After up to backoff.maxMs is honoured, a longer
//   one ends the retrying. The whole exchange keeps to limits.requestTimeoutMs (or its route's
//   timeoutMs; 0: no deadline but a gRPC client's own and perTryTimeoutMs).
import { PassThrough, Readable } from 'node:stream'
import type { Clock } from '../clock.js'
import { ERRORS, GRPC_RETRY_ON, SidecarError, isErrorCode, toSidecarError, type CatalogueEntry, type GrpcRetryOn, type RetryOn } from '../errors.js'
import type { Metrics } from '../metrics.js'
import { Cancel } from '../pipeline/cancel.js'
import { pass, release } from '../pipeline/compose.js'
import { isGrpc } from '../pipeline/local-reply.js'
import type { Handler, HeaderMap, Layer, ProxyRequest, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'
import { RetryBudget, type RetryBudgetOptions } from './retry-budget.js'

export interface RetryOptions {
  attempts: number
  perTryTimeoutMs?: number | undefined
  retryOn: readonly RetryOn[]
  statusCodes: readonly number[]
  methods: readonly string[]
  backoff: { baseMs: number; maxMs: number }
  budget: RetryBudgetOptions
  maxReplayBytes: number
  /** limits.requestTimeoutMs, or the route's timeoutMs: the deadline for the response headers
   *  over all tries. 0: none. */
  requestTimeoutMs: number
}

export interface RetryDeps {
  metrics: Metrics
  clock: Clock
  /** [0, 1); jitter. Tests pass () => 0. */
  random?: () => number
  /** The budget to draw retries from, shared by the routes with the same budget settings;
   *  without it the layer has its own. */
  budget?: RetryBudget
}

const ATTEMPT_HEADER = 'x-sidecar-attempt'

export function createRetryLayer(opts: RetryOptions, deps: RetryDeps): Layer {
  const budget = deps.budget ?? new RetryBudget(opts.budget, deps.clock)
  const limit = opts.requestTimeoutMs > 0 ? opts.requestTimeoutMs : Infinity
  const random = deps.random ?? Math.random
  const retryOn = new Set(opts.retryOn)
  const statusCodes = new Set(opts.statusCodes)
  const methods = new Set(opts.methods)

  const grpcRetryOn = opts.retryOn.filter((c): c is GrpcRetryOn => c in GRPC_RETRY_ON)

  /** The retryOn condition an outcome meets, or null when it must not be retried. */
  const reasonFor = (response: ProxyResponse | undefined, error: SidecarError | undefined, grpc: boolean): RetryOn | null => {
    if (response) {
      const status = response.status
      if (grpc) return grpcRetryOn.find((c) => String(GRPC_RETRY_ON[c]) === response.headers['grpc-status']) ?? null
      if ((status === 502 || status === 503 || status === 504) && retryOn.has('gateway-error')) return 'gateway-error'
      if (statusCodes.has(status) && retryOn.has('retriable-status-codes')) return 'retriable-status-codes'
      return null
    }
    return retryReason(ERRORS[error!.code], retryOn)
  }

  return (next) => (req, ctx, reply) => {
    budget.deposit()
    // a gRPC client's own deadline (grpc-timeout) caps the proxy's
    const grpcTimeout = req.headers['grpc-timeout'] === undefined ? undefined : grpcTimeoutMs(req.headers['grpc-timeout'])
    const timeoutMs = grpcTimeout === undefined ? limit : Math.min(limit, grpcTimeout)
    const idempotent = methods.has(req.method) || req.headers['idempotency-key'] !== undefined
    const grpc = isGrpc(req.headers['content-type'])
    const tries: Tries = { next, req, ctx, reply, decide, timeoutMs, deadline: deps.clock.now() + timeoutMs, idempotent, grpc, kept: NOTHING_TO_KEEP, streamed: null }
    // Keep the body for a replay only when a retry could use it. A gRPC body streams as it comes
    // (a streaming call never ends while it waits for answers) and is recorded on its way.
    const body = req.body
    if (body === null) return attempt(tries, 1)
    if (Buffer.isBuffer(body)) tries.kept = { stream: null, replay: () => [body] } // received whole (layers/receive.ts)
    else if (opts.attempts === 1 || (grpc ? grpcRetryOn.length === 0 : !idempotent)) tries.kept = { stream: body, replay: () => null }
    else if (grpc) tries.kept = recorded(body, opts.maxReplayBytes)
    else
      return void replayable(body, req.contentLength, opts.maxReplayBytes).then(
        (kept) => {
          tries.kept = kept
          tries.streamed = kept.stream
          attempt(tries, 1)
        },
        (err: unknown) => reply.fail(err),
      )
    tries.streamed = tries.kept.stream
    attempt(tries, 1)
  }

  /** Try number `n`; its outcome decides (`decide`) whether there is another. Called from a
   *  timer or a promise too, so it answers its failure to set one up, never throws it. */
  function attempt(t: Tries, n: number): void {
    try {
      send(t, n)
    } catch (err) {
      t.reply.fail(err)
    }
  }

  function send(t: Tries, n: number): void {
    const { req, ctx } = t
    const remaining = t.deadline - deps.clock.now()
    if (remaining <= 0) return t.reply.fail(new SidecarError('upstream_timeout', { detail: `no response within ${t.timeoutMs} ms (limits.requestTimeoutMs or grpc-timeout)` }))
    ctx.attempt = n
    const replay = t.streamed === null ? t.kept.replay() : null
    const attemptBody = t.streamed ?? (replay === null ? null : replay.length === 1 ? replay[0]! : Readable.from(replay))
    t.streamed = null // a streamed body can be sent once
    // The first attempt is sent as the request itself: its headers are the request's own (the
    // listener built them for it). Each later one gets a copy, numbered anew.
    const headers = n === 1 ? (req.headers as HeaderMap) : { ...req.headers }
    headers[ATTEMPT_HEADER] = String(n)
    const attemptReq: ProxyRequest = n === 1 && attemptBody === req.body ? req : { ...req, headers, body: attemptBody }
    const timeoutMs = Math.min(opts.perTryTimeoutMs ?? remaining, remaining)
    new Try(t, n, timeoutMs, deps.clock).run(attemptReq)
  }

  /** After try `n`: its answer or error goes on, or, when it may and should be retried and the
   *  budget and the deadline allow, another try after the backoff. */
  function decide(t: Tries, n: number, response: ProxyResponse | undefined, error: SidecarError | undefined): void {
    const reason = n < opts.attempts ? reasonFor(response, error, t.grpc) : null
    const resendable = t.req.body === null || t.kept.replay() !== null
    // a gRPC status the operator named is retried whatever the method (Envoy's retry_on)
    const allowed = reason !== null && resendable && (reason in GRPC_RETRY_ON || mayResend(error && ERRORS[error.code], t.idempotent))
    const wait = allowed ? backoffMs(n, response) : null
    if (!allowed || wait === null || deps.clock.now() + wait >= t.deadline) return settle(t.reply, response, error)
    if (!budget.tryWithdraw()) {
      deps.metrics.countBudgetExhausted()
      return settle(t.reply, response, error)
    }
    deps.metrics.countRetry(t.ctx.backend ?? 'none', reason)
    release(response)
    // never from inside the failed try's own call (the upstream client's callback): on a later turn
    if (wait === 0) return queueMicrotask(() => attempt(t, n + 1))
    deps.clock.sleep(wait, t.ctx.signal).then(
      () => attempt(t, n + 1),
      () => t.reply.fail(new SidecarError('client_closed')),
    )
  }

  /** Full jitter, or the server's Retry-After if it is no longer than backoff.maxMs; null: do not retry. */
  function backoffMs(attempt: number, response: ProxyResponse | undefined): number | null {
    const retryAfter = response ? retryAfterMs(response.headers['retry-after'], deps.clock.now()) : undefined
    if (retryAfter !== undefined) return retryAfter <= opts.backoff.maxMs ? retryAfter : null
    return random() * Math.min(opts.backoff.maxMs, opts.backoff.baseMs * 2 ** (attempt - 1))
  }
}

/** The configured retryOn condition an error meets (its catalogue entry says which), or null. */
export function retryReason(entry: CatalogueEntry, retryOn: ReadonlySet<RetryOn>): RetryOn | null {
  return entry.retryOn.find((condition) => retryOn.has(condition)) ?? null
}

/** Whether a failed try may be sent again: an idempotent request always; any other only when the
 *  failure's catalogue entry says the app never got it (an answer means it did). */
export function mayResend(failure: CatalogueEntry | undefined, idempotent: boolean): boolean {
  return idempotent || (failure !== undefined && !failure.mayHaveReachedApp)
}

/** One request's tries: what every try and every decision needs. */
interface Tries {
  next: Handler
  req: ProxyRequest
  ctx: RequestContext
  /** Where the outcome of the last try goes. */
  reply: Reply
  /** The layer's decision after each try (one function per layer, not per request). */
  decide: (t: Tries, n: number, response: ProxyResponse | undefined, error: SidecarError | undefined) => void
  timeoutMs: number
  deadline: number
  idempotent: boolean
  grpc: boolean
  kept: Kept
  /** The body as it streams, for the first try only; null once sent or when kept whole. */
  streamed: Readable | null
}

/**
 * One attempt with its own cancellation: aborted when the client leaves, or with
 * upstream_timeout when no response headers came within `timeoutMs` of the request being sent.
 * (One per attempt: a shared one would cancel every attempt in flight at the first timeout.)
 * It is also where the attempt's outcome comes back, to be decided on (Tries.decide).
 */
class Try extends Cancel implements Reply {
  private stopTimer: () => void = noop
  /** A body still streaming to the app: the deadline starts at its end. */
  private startAtEnd: { body: Readable; start: () => void } | null = null
  private settled = false

  constructor(
    private readonly tries: Tries,
    private readonly n: number,
    private readonly timeoutMs: number,
    private readonly clock: Clock,
  ) {
    super()
    tries.ctx.signal.add(this)
  }

  /** Sends `req` on; its outcome comes back to ok() or fail(). */
  run(req: ProxyRequest): void {
    // The deadline is the app's: it starts once the body is sent, so that a client slow to send
    // it is never taken for an app slow to answer (Envoy's route timeout starts there too). A
    // gRPC call's deadline starts at once: its body may go on for as long as the call does.
    const body = req.body
    if (body === null || Buffer.isBuffer(body) || body.readableEnded || isGrpc(req.headers['content-type'])) this.arm()
    else {
      const start = () => this.arm()
      this.startAtEnd = { body, start }
      body.once('end', start)
    }
    const { ctx, next } = this.tries
    ctx.attemptSignal = this
    pass(next, req, ctx, this)
  }

  ok(response: ProxyResponse): void {
    if (this.over()) this.tries.decide(this.tries, this.n, response, undefined)
    else release(response)
  }

  fail(err: unknown): void {
    if (this.over()) this.tries.decide(this.tries, this.n, undefined, toSidecarError(err))
  }

  /** From the outcome on, the response body is the listener's: it destroys the body if the
   *  client leaves. False when the try was over already (a second outcome goes nowhere). */
  private over(): boolean {
    if (this.settled) return false
    this.settled = true
    this.stopTimer()
    if (this.startAtEnd) this.startAtEnd.body.off('end', this.startAtEnd.start)
    this.tries.ctx.signal.remove(this)
    return true
  }

  private arm(): void {
    this.startAtEnd = null
    // No deadline (a route with timeoutMs 0): no timer. One of Infinity would fire at once (Node
    // turns delays past 2^31-1 ms into 1 ms).
    if (!Number.isFinite(this.timeoutMs)) return
    this.stopTimer = this.clock.timeout(this.timeoutMs, () =>
      this.abort(new SidecarError('upstream_timeout', { detail: `no response headers within ${this.timeoutMs} ms` })),
    )
  }
}

/** What a try ended with goes on: its answer, or its error. */
function settle(reply: Reply, response: ProxyResponse | undefined, error: SidecarError | undefined): void {
  if (error) reply.fail(error)
  else reply.ok(response!)
}

const noop = () => {}

const NOTHING_TO_KEEP: Kept = { stream: null, replay: () => null }

/** A request body for the tries: `stream` for the first (null when it was read whole into
 *  memory), `replay()` the whole body for another try, or null when there is none to give. */
interface Kept {
  stream: Readable | null
  replay(): Buffer[] | null
}

/**
 * A body passed on as it comes, with a copy kept while it fits in `max` bytes: the replay is
 * that copy once the body has ended whole, else null (not ended yet, or too large).
 */
function recorded(body: Readable, max: number): Kept {
  const copy: Buffer[] = []
  let size = 0
  let ended = false
  const stream = new PassThrough()
  body.on('data', (chunk: Buffer) => {
    size += chunk.length
    if (size <= max) copy.push(chunk)
    else copy.length = 0
  })
  body.once('end', () => (ended = true))
  body.once('error', (err) => stream.destroy(err))
  body.pipe(stream)
  return { stream, replay: () => (ended && size <= max ? copy : null) }
}

/** grpc-timeout (`100m`, `5S`: digits and a unit) in milliseconds; undefined when absent or bad. */
export function grpcTimeoutMs(value: string | string[] | undefined): number | undefined {
  const m = typeof value === 'string' ? /^(\d{1,8})([HMSmun])$/.exec(value) : null
  if (!m) return undefined
  const unitMs = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }[m[2] as 'H' | 'M' | 'S' | 'm' | 'u' | 'n']
  return Math.max(1, Math.ceil(Number(m[1]) * unitMs))
}

/**
 * Reads the body into memory when it fits in `max` bytes (replay); otherwise returns a stream
 * that yields what was read and then the rest, untouched, and the request is not retried.
 */
async function replayable(body: Readable, contentLength: number | null, max: number): Promise<Kept> {
  if (contentLength !== null && contentLength > max) return { stream: body, replay: () => null }
  const { chunks, complete } = await readUpTo(body, max).catch((err: unknown) => {
    // the client went away mid-body, or the limits layer cut it (body_too_large)
    throw isErrorCode((err as { code?: unknown }).code) ? err : new SidecarError('client_closed', { cause: err })
  })
  if (complete) return { stream: null, replay: () => chunks }
  return {
    stream: Readable.from(
      (async function* () {
        yield* chunks
        yield* body
      })(),
    ),
    replay: () => null,
  }
}

function readUpTo(body: Readable, max: number): Promise<{ chunks: Buffer[]; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const done = (complete: boolean) => {
      body.off('data', onData).off('end', onEnd).off('error', onError)
      resolve({ chunks, complete })
    }
    const onData = (chunk: Buffer) => {
      chunks.push(chunk)
      size += chunk.length
      if (size > max) {
        body.pause()
        done(false)
      }
    }
    const onEnd = () => done(true)
    const onError = (err: Error) => {
      body.off('data', onData).off('end', onEnd)
      reject(err)
    }
    body.on('data', onData).on('end', onEnd).on('error', onError)
  })
}

/** Retry-After as milliseconds from now: delta-seconds or an HTTP date. */
export function retryAfterMs(value: string | string[] | undefined, now: number): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined) return undefined
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000
  const date = Date.parse(v)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}
