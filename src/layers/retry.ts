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
import { callNext } from '../pipeline/compose.js'
import { isGrpc } from '../pipeline/local-reply.js'
import type { HeaderMap, Layer, ProxyRequest, ProxyResponse, RequestContext } from '../pipeline/types.js'
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
  const reasonFor = (outcome: Outcome, grpc: boolean): RetryOn | null => {
    if (outcome.response) {
      const status = outcome.response.status
      if (grpc) return grpcRetryOn.find((c) => String(GRPC_RETRY_ON[c]) === outcome.response.headers['grpc-status']) ?? null
      if ((status === 502 || status === 503 || status === 504) && retryOn.has('gateway-error')) return 'gateway-error'
      if (statusCodes.has(status) && retryOn.has('retriable-status-codes')) return 'retriable-status-codes'
      return null
    }
    return retryReason(ERRORS[outcome.error.code], retryOn)
  }

  return (next) => async (req, ctx) => {
    budget.deposit()
    // a gRPC client's own deadline (grpc-timeout) caps the proxy's
    const grpcTimeout = req.headers['grpc-timeout'] === undefined ? undefined : grpcTimeoutMs(req.headers['grpc-timeout'])
    const timeoutMs = grpcTimeout === undefined ? limit : Math.min(limit, grpcTimeout)
    const deadline = deps.clock.now() + timeoutMs
    const idempotent = methods.has(req.method) || req.headers['idempotency-key'] !== undefined
    const grpc = isGrpc(req.headers['content-type'])
    // Keep the body for a replay only when a retry could use it. A gRPC body streams as it comes
    // (a streaming call never ends while it waits for answers) and is recorded on its way.
    const body = req.body
    const kept: Kept =
      body === null
        ? NOTHING_TO_KEEP
        : Buffer.isBuffer(body)
          ? { stream: null, replay: () => [body] } // received whole (layers/receive.ts)
          : opts.attempts === 1 || (grpc ? grpcRetryOn.length === 0 : !idempotent)
            ? { stream: body, replay: () => null }
            : grpc
              ? recorded(body, opts.maxReplayBytes)
              : await replayable(body, req.contentLength, opts.maxReplayBytes)
    let streamed = kept.stream

    for (let attempt = 1; ; attempt++) {
      const remaining = deadline - deps.clock.now()
      if (remaining <= 0) throw new SidecarError('upstream_timeout', { detail: `no response within ${timeoutMs} ms (limits.requestTimeoutMs or grpc-timeout)` })
      ctx.attempt = attempt
      const replay = streamed === null ? kept.replay() : null
      const attemptBody = streamed ?? (replay === null ? null : replay.length === 1 ? replay[0]! : Readable.from(replay))
      streamed = null // a streamed body can be sent once
      // The first attempt is sent as the request itself: its headers are the request's own (the
      // listener built them for it). Each later one gets a copy, numbered anew.
      const headers = attempt === 1 ? (req.headers as HeaderMap) : { ...req.headers }
      headers[ATTEMPT_HEADER] = String(attempt)
      const attemptReq: ProxyRequest = attempt === 1 && attemptBody === req.body ? req : { ...req, headers, body: attemptBody }
      const outcome = await tryOnce(next, attemptReq, ctx, Math.min(opts.perTryTimeoutMs ?? remaining, remaining), deps.clock)
      const reason = attempt < opts.attempts ? reasonFor(outcome, grpc) : null
      const resendable = req.body === null || kept.replay() !== null
      // a gRPC status the operator named is retried whatever the method (Envoy's retry_on)
      const allowed =
        reason !== null && resendable && (reason in GRPC_RETRY_ON || mayResend(outcome.error && ERRORS[outcome.error.code], idempotent))
      const wait = allowed ? backoffMs(attempt, outcome.response) : null
      if (!allowed || wait === null || deps.clock.now() + wait >= deadline) return settle(outcome)
      if (!budget.tryWithdraw()) {
        deps.metrics.countBudgetExhausted()
        return settle(outcome)
      }
      deps.metrics.countRetry(ctx.backend ?? 'none', reason)
      discard(outcome)
      if (wait > 0) await deps.clock.sleep(wait, ctx.signal).catch(() => Promise.reject(new SidecarError('client_closed')))
    }
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

type Outcome = { response: ProxyResponse; error?: undefined } | { error: SidecarError; response?: undefined }

/**
 * One attempt with its own cancellation: aborted when the client leaves, or with
 * upstream_timeout when no response headers came within `timeoutMs` of the request being sent. (One per attempt: a shared
 * one would cancel every attempt in flight at the first timeout.)
 */
function tryOnce(
  next: (req: ProxyRequest, ctx: RequestContext) => Promise<ProxyResponse>,
  req: ProxyRequest,
  ctx: RequestContext,
  timeoutMs: number,
  clock: Clock,
): Promise<Outcome> {
  const attempt = new Cancel()
  const unlink = ctx.signal.onAbort((reason) => attempt.abort(reason))
  const expire = () => attempt.abort(new SidecarError('upstream_timeout', { detail: `no response headers within ${timeoutMs} ms` }))
  // No deadline (a route with timeoutMs 0): no timer. One of Infinity would fire at once (Node
  // turns delays past 2^31-1 ms into 1 ms).
  const arm = Number.isFinite(timeoutMs) ? () => clock.timeout(timeoutMs, expire) : () => noop
  // The deadline is the app's: it starts once the body is sent, so that a client slow to send
  // it is never taken for an app slow to answer (Envoy's route timeout starts there too). A
  // gRPC call's deadline starts at once: its body may go on for as long as the call does.
  const body = req.body
  let cancelTimer: () => void
  if (body === null || Buffer.isBuffer(body) || body.readableEnded || isGrpc(req.headers['content-type'])) cancelTimer = arm()
  else {
    const start = () => (cancelTimer = arm())
    body.once('end', start)
    cancelTimer = () => body.off('end', start)
  }
  ctx.attemptSignal = attempt
  // From the outcome on, the response body is the listener's: it destroys the body if the client leaves.
  const over = () => {
    cancelTimer()
    unlink()
  }
  return callNext(next, req, ctx).then(
    (response) => {
      over()
      return { response }
    },
    (err: unknown) => {
      over()
      return { error: toSidecarError(err) }
    },
  )
}

function settle(outcome: Outcome): ProxyResponse {
  if (outcome.error) throw outcome.error
  return outcome.response
}

function discard(outcome: Outcome): void {
  const body = outcome.response?.body
  if (body && !Buffer.isBuffer(body)) body.on('error', () => {}).destroy()
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
