// The shapes every layer speaks. A layer is `(next) => handler`; the request path is one ordered
// list of layers in src/stack.ts. Nothing here knows about sockets, undici or config.
import type { Duplex, Readable } from 'node:stream'
import type { ErrorCode } from '../errors.js'
import type { Cancel } from './cancel.js'

/** Header names are lower-case; a repeated header is an array. */
export type HeaderMap = Record<string, string | string[]>

export interface ProxyRequest {
  readonly method: string
  /** Path and query exactly as the client sent them. */
  readonly path: string
  /** End-to-end headers plus the proxy's own (x-forwarded-*, x-request-id): what the app gets. */
  readonly headers: Readonly<HeaderMap>
  /** The request body: streamed, or received whole into memory (layers/receive.ts); null when
   *  the request has none. */
  readonly body: Readable | Buffer | null
  /** The declared body length (Content-Length), or null when chunked or absent. */
  readonly contentLength: number | null
  /** How many header lines the client sent (repeats included), for the header-count cap. */
  readonly headerCount: number
  /** The client's Transfer-Encoding (hop-by-hop, so not in `headers`), or null. */
  readonly transferEncoding: string | null
  /** HTTP/1.1 Upgrade: the protocol the client asks to switch to (`websocket`), when it does. */
  readonly upgrade?: string | undefined
  /** What the caller asked of fault injection with x-sidecar-fault-delay-ms and
   *  x-sidecar-fault-abort (headers the app never gets), when it sent either; honoured only
   *  with fault.headerControl. */
  readonly faultAsked?: { readonly delayMs: string | undefined; readonly abort: string | undefined } | undefined
}

export interface ProxyResponse {
  status: number
  headers: HeaderMap
  /** Streamed from the upstream, or a small buffer the proxy made up. */
  body: Readable | Buffer | null
  /** Trailers of a streamed body, filled in by the time the body ends (gRPC's grpc-status). */
  trailers?: Readonly<Record<string, string | string[] | undefined>>
  /** After a 101 to an upgrade: the connection to the app, now the app's half of a tunnel. */
  tunnel?: Duplex
}

/** How a request ended, known only once the last byte went out (or the client left). */
export interface RequestOutcome {
  status: number
  /** Bytes read from and written to the client for this exchange, headers included (like nginx). */
  bytesIn: number
  bytesOut: number
  /** False when the response was cut short (client left, upstream broke mid-body). */
  complete: boolean
  durationSeconds: number
  /** An upgraded connection: how its tunnel ended (both sides closed, idle timeout, error). */
  tunnel?: 'closed' | 'idle' | 'error'
}

export interface RequestContext {
  readonly id: string
  /** The peer's address (the client's, or the last proxy's). */
  readonly clientAddress: string
  /** Who the client is for the per-client policies (server/client-identity.ts): a verified
   *  certificate's identity, the client a trusted proxy named, else the peer's address. */
  readonly clientKey: string
  readonly protocol: 'http' | 'https'
  /** process.hrtime.bigint() when the request arrived. */
  readonly startedAt: bigint
  /** Aborted when the client goes away. */
  readonly signal: Cancel
  /** The route the request matched (set by the route-match layer): a route's name, or
   *  "default" for the top-level settings. */
  route: string
  /** The backend chosen for the current attempt (set by the pick layer). */
  backend: string | undefined
  /** The current attempt, 1-based, and its signal: aborted when the client leaves or the
   *  attempt's deadline passes (set by the retry layer; attempts are sequential, so one mutable
   *  slot suffices). Upstream calls use attemptSignal. */
  attempt: number
  attemptSignal: Cancel
  /** The catalogue code when the proxy, not the app, decided the response (or cut it short). */
  error: ErrorCode | undefined
  /** Callbacks run once with the outcome when the exchange is over. */
  readonly onEnd: EndHook[]
  /** The client's HTTP version as Node read it: `1.1`, `1.0`, `2.0`. */
  readonly httpVersion: string
  /** The request's trace when tracing is on (set by layers/tracing.ts), else undefined. */
  trace: RequestTrace | undefined
  /** How its client keeps up, for the ceilings that make room by evicting (pipeline/pressure.ts). */
  readonly progress: ClientProgress
  /** The client connection it came on (an HTTP/1 socket, an HTTP/2 session): the unit a
   *  backend's waiting requests are served by, in turn (layers/overload.ts). */
  readonly connection: object
}

/** What the front door's ceilings evict to make room (pipeline/pressure.ts). */
export type Resource = 'connections' | 'requests' | 'buffers'

/** How a request's client keeps up with its exchange (the listener's): a ceiling that has no
 *  room left evicts whoever has held things up longest. */
export interface ClientProgress {
  /** Milliseconds the client has been holding the exchange up: not reading its answer, or
   *  sending its body slower than a minimum rate; 0 while it keeps up, or while the app works. */
  stalledFor(now: number): number
  /** Cuts the exchange for its client's slowness (client_slow), to make room at `resource`. */
  evict(resource: Resource): void
}

/** Run once when the exchange is over, with the request as the listener built it and its
 *  context: a layer's hook needs no closure of its own per request. */
export type EndHook = (outcome: RequestOutcome, req: ProxyRequest, ctx: RequestContext) => void

/** A request's place in a distributed trace: its SERVER span and what the app is told. */
export interface RequestTrace {
  readonly traceId: string
  /** The SERVER span's id (in the access line as span_id). */
  readonly spanId: string
  /** The caller's span, when the request came with a valid one. */
  readonly parentSpanId: string | undefined
  /** Sampled spans are recorded and exported; the app is told either way (flags 01 / 00). */
  readonly sampled: boolean
  /** The caller's tracestate, passed on unchanged (only with a valid traceparent). */
  readonly traceState: string | undefined
  /** The headers the caller's context came in, when any: the app is told in the same format. */
  readonly via: 'w3c' | 'b3' | 'b3-multi' | undefined
}

/**
 * Where a handler sends its outcome: `ok` with the response (at its headers; a streamed body goes
 * on after) or `fail` with the error, one of the two, once. A layer that has to see the outcome
 * hands the layer below a Reply of its own that passes it up; one that has nothing to do on the
 * way back hands down the one it was given. No promise is made per layer: a layer waits only when
 * it has something to wait for (a body, a slot, a backoff).
 */
export interface Reply {
  ok(response: ProxyResponse): void
  fail(err: unknown): void
}

/** One step of the request path: answers `reply`, now or later. It may throw only before it has
 *  answered (the layers that hold something catch it: pipeline/compose.ts `pass`). An `async`
 *  function type-checks as a Handler but answers nothing: its promise goes nowhere. */
export type Handler = (req: ProxyRequest, ctx: RequestContext, reply: Reply) => void
export type Layer = (next: Handler) => Handler
