// The one catalogue of errors the proxy itself generates, and of the errors that stop it from
// starting. Every response the proxy makes up carries `x-sidecar-error: <code>`; the code is
// stable (dashboards, alerts and clients key on it), the status follows nginx/Envoy conventions.
// Codes are lower_snake so they can never clash with Node's or undici's UPPER_CASE `err.code`
// values: branch on `err.code`, never instanceof.
//
// Each entry also says what the error MEANS, and every policy reads that instead of keeping its
// own list (linkerd2-proxy's errors/respond.rs and classify.rs: one classification feeds every
// policy): the breaker counts `breaker` entries, retry retries on `retryOn` and replays a
// non-idempotent request only when `mayHaveReachedApp` is false, the listener closes the client
// connection after `close` entries, and the local reply of a gRPC request carries `grpcStatus`.

/** The retry.retryOn conditions (the config's names). */
export type RetryOn = 'connect-failure' | 'refused' | 'reset' | 'gateway-error' | 'retriable-status-codes' | GrpcRetryOn

/** gRPC statuses a gRPC request may be retried on (Envoy's names), when its answer is only a
 *  status ("trailers-only": nothing of the response went out yet). */
export const GRPC_RETRY_ON = { cancelled: 1, 'deadline-exceeded': 4, 'resource-exhausted': 8, internal: 13, unavailable: 14 } as const
export type GrpcRetryOn = keyof typeof GRPC_RETRY_ON

export interface CatalogueEntry {
  readonly status: number
  readonly message: string
  /** Who caused it. Only upstream-blamed failures may count against a backend. */
  readonly blame: 'client' | 'proxy' | 'upstream'
  /** False only when the app certainly did not get the request (so even a POST may be sent again). */
  readonly mayHaveReachedApp: boolean
  /** HTTP/1.1: close the client connection after the answer; what follows on it cannot be trusted. */
  readonly close: boolean
  /** Counted as a failure by the backend's circuit breaker. */
  readonly breaker: boolean
  /** The retryOn conditions under which another try may follow, in order of preference. */
  readonly retryOn: readonly RetryOn[]
  /** The gRPC status of the answer when the request is gRPC. */
  readonly grpcStatus: number
}

/** gRPC status codes used below (grpc/doc/statuscodes.md). */
const GRPC = { CANCELLED: 1, UNKNOWN: 2, DEADLINE_EXCEEDED: 4, RESOURCE_EXHAUSTED: 8, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14 } as const

/** A request refused from what the client sent: it never reached the app, nothing to retry. */
const refused = (status: number, message: string, grpcStatus: number, close = true): CatalogueEntry => ({
  status,
  message,
  blame: 'client',
  mayHaveReachedApp: false,
  close,
  breaker: false,
  retryOn: [],
  grpcStatus,
})

/** The client left, or was cut, mid-exchange. 499 is nginx's "client closed request": logged
 *  and counted, never sent (nobody is listening). */
const gone = (message: string): CatalogueEntry => ({
  status: 499,
  message,
  blame: 'client',
  mayHaveReachedApp: true,
  close: true,
  breaker: false,
  retryOn: [],
  grpcStatus: GRPC.CANCELLED,
})

/** The proxy chose not to forward (its own limits or policy): the app got nothing. */
const heldBack = (status: number, message: string): CatalogueEntry => ({
  status,
  message,
  blame: 'proxy',
  mayHaveReachedApp: false,
  close: false,
  breaker: false,
  retryOn: [],
  grpcStatus: GRPC.UNAVAILABLE,
})

/** A backend failed an attempt: counted by its breaker. */
const upstream = (
  status: number,
  message: string,
  o: { mayHaveReachedApp: boolean; retryOn?: readonly RetryOn[]; grpcStatus?: number },
): CatalogueEntry => ({
  status,
  message,
  blame: 'upstream',
  mayHaveReachedApp: o.mayHaveReachedApp,
  close: false,
  breaker: true,
  retryOn: o.retryOn ?? [],
  grpcStatus: o.grpcStatus ?? GRPC.UNAVAILABLE,
})

export const ERRORS = {
  bad_request: refused(400, 'malformed request', GRPC.INTERNAL),
  request_timeout: refused(408, 'the request did not arrive within the listener timeouts', GRPC.DEADLINE_EXCEEDED),
  body_too_large: refused(413, 'request body larger than limits.maxBodyBytes', GRPC.RESOURCE_EXHAUSTED),
  headers_too_large: refused(
    431,
    'request headers larger than limits.maxHeaderBytes or more than limits.maxHeaderCount',
    GRPC.RESOURCE_EXHAUSTED,
  ),
  method_not_allowed: refused(405, 'method not supported by a reverse proxy', GRPC.UNIMPLEMENTED),
  http_version_not_supported: refused(505, 'the proxy speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (over TLS)', GRPC.UNIMPLEMENTED),
  unsupported_transfer_encoding: refused(
    501,
    'request Transfer-Encoding other than chunked: the proxy would pass a coded body off as plain',
    GRPC.UNIMPLEMENTED,
  ),
  client_over_limit: refused(429, 'this client address has limits.maxRequestsPerClient requests in flight', GRPC.RESOURCE_EXHAUSTED, false),
  rate_limited: refused(429, "over the route's rateLimit: try again after Retry-After", GRPC.RESOURCE_EXHAUSTED, false),
  // The answer had begun when the proxy cut a client that stopped reading.
  client_slow: gone('the client read nothing of its response for limits.sendIdleTimeoutMs: cut'),
  client_closed: gone('the client went away before the response was complete'),
  internal: {
    status: 500,
    message: 'internal proxy error',
    blame: 'proxy',
    mayHaveReachedApp: true, // unknown: assume the worst
    close: false,
    breaker: false,
    retryOn: [],
    grpcStatus: GRPC.INTERNAL,
  },
  upstream_refused: upstream(502, 'the upstream refused the connection', { mayHaveReachedApp: false, retryOn: ['refused', 'connect-failure'] }),
  upstream_unreachable: upstream(502, 'the upstream address could not be reached', { mayHaveReachedApp: false, retryOn: ['connect-failure'] }),
  // a handshake refused either way: the backend's TLS layer answered, its app got nothing
  upstream_tls: upstream(502, 'the TLS handshake with the upstream failed', { mayHaveReachedApp: false, retryOn: ['connect-failure'] }),
  upstream_reset: upstream(502, 'the upstream closed the connection before the response was complete', {
    mayHaveReachedApp: true,
    retryOn: ['reset'],
  }),
  upstream_bad_response: upstream(502, 'the upstream sent a malformed response', { mayHaveReachedApp: true, grpcStatus: GRPC.INTERNAL }),
  upstream_connect_timeout: upstream(504, 'the upstream did not accept the connection in time', {
    mayHaveReachedApp: false,
    retryOn: ['connect-failure'],
  }),
  // a per-try timeout is the 504 the app did not send: retried as a gateway error
  upstream_timeout: upstream(504, 'the upstream did not respond in time (retry.perTryTimeoutMs or limits.requestTimeoutMs)', {
    mayHaveReachedApp: true,
    retryOn: ['gateway-error'],
    grpcStatus: GRPC.DEADLINE_EXCEEDED,
  }),
  upstream_unhealthy: upstream(503, 'the backend fails its health checks and did not answer this request either', { mayHaveReachedApp: true }),
  circuit_open: heldBack(503, 'the circuit breaker for the backend is open: it failed too often and is resting'),
  no_backend: heldBack(503, 'no backend can take the request'),
  local_resources_exhausted: heldBack(
    503,
    'the proxy is out of file descriptors (ulimit -n) or socket memory for a new upstream connection',
  ),
  overloaded: heldBack(503, 'the backend has limits.maxConcurrentRequests in flight and limits.maxPendingRequests waiting'),
  // The app's capacity, as its concurrency limit finds it (backends[].concurrency): the app
  // is blamed, but it did not fail, so no breaker counts it; gRPC clients read it as back-off.
  concurrency_limited: {
    ...heldBack(503, 'the backend is at its concurrency limit (backends[].concurrency): the request waited concurrency.maxWaitMs, or found limits.maxPendingRequests waiting'),
    blame: 'upstream',
    grpcStatus: GRPC.RESOURCE_EXHAUSTED,
  },
  // The deadline passed while the request waited for one of the backend's pooled connections
  // (all held, e.g. by slow clients): the app never had it, and is not blamed.
  upstream_busy: heldBack(503, 'no connection to the backend came free before the deadline: its backends[].maxConnections are all in use'),
  too_many_tunnels: heldBack(503, 'limits.maxTunnels upgraded connections (WebSocket) are open already'),
  // Connections refused at accept and HTTP/2 connections closed for abuse: counted, never answered.
  too_many_connections: heldBack(503, 'limits.maxConnections or limits.maxConnectionsPerClient connections are open already'),
  stream_reset_flood: { ...refused(400, 'the HTTP/2 connection reset, or had refused for being over its limit, more than limits.maxStreamResetsPer10s streams in 10 s', GRPC.RESOURCE_EXHAUSTED), close: true },
  // fault.abort (or x-sidecar-fault-abort): the operator asked for a failure; the status and
  // gRPC status are the fault's own (these are the defaults). Never sent to the app, never
  // retried, never counted by a breaker.
  fault_injected: heldBack(503, 'a fault injected on purpose (fault.abort): the request was not forwarded'),
  proxy_overloaded: heldBack(503, 'the proxy is shedding load: its event loop runs later than limits.maxEventLoopDelayMs'),
} as const satisfies Record<string, CatalogueEntry>

export type ErrorCode = keyof typeof ERRORS

export class SidecarError extends Error {
  readonly code: ErrorCode
  readonly status: number
  /** Sent as Retry-After when set: when trying again makes sense. */
  readonly retryAfterSeconds: number | undefined
  /** What this occurrence adds to the catalogue message. */
  readonly detail: string | undefined
  /** The gRPC status of the local reply, when this occurrence has its own (an injected fault). */
  readonly grpcStatus: number | undefined

  /** `status` and `grpcStatus` override the catalogue's, for the one code whose answer the
   *  operator chooses (fault_injected). */
  constructor(code: ErrorCode, options?: { cause?: unknown; detail?: string; retryAfterSeconds?: number; status?: number; grpcStatus?: number | undefined }) {
    const entry = ERRORS[code]
    super(options?.detail ? `${entry.message}: ${options.detail}` : entry.message, { cause: options?.cause })
    this.name = 'SidecarError'
    this.code = code
    this.status = options?.status ?? entry.status
    this.grpcStatus = options?.grpcStatus
    this.retryAfterSeconds = options?.retryAfterSeconds
    this.detail = options?.detail
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code)
}

/** Anything thrown inside the pipeline, as a SidecarError. Unknown errors become `internal`. */
export function toSidecarError(err: unknown): SidecarError {
  const code = (err as { code?: unknown } | null)?.code
  if (isErrorCode(code)) {
    return (err as Error).name === 'SidecarError' ? (err as SidecarError) : new SidecarError(code, { cause: err })
  }
  return new SidecarError('internal', { cause: err })
}

// ---- start-up -------------------------------------------------------------------------------
// What stops a command before it runs: the exit code is decided here, once, by the code.

export const STARTUP_ERRORS = {
  usage: { exitCode: 2, message: 'bad usage' },
  config_invalid: { exitCode: 2, message: 'invalid config' },
  tls_material_invalid: { exitCode: 2, message: 'a certificate, key or CA bundle the config names cannot be used' },
  listen_failed: { exitCode: 1, message: 'a port could not be bound' },
  would_overwrite: { exitCode: 2, message: 'a file exists that the command would replace' },
} as const satisfies Record<string, { exitCode: number; message: string }>

export type StartupCode = keyof typeof STARTUP_ERRORS

/** A start-up failure whose message is the whole story for the operator (no stack needed). */
export class StartupError extends Error {
  constructor(
    readonly code: StartupCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
    this.name = 'StartupError'
  }
}

export function isStartupError(err: unknown): err is StartupError {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && Object.hasOwn(STARTUP_ERRORS, code)
}

/** The process exit code for an error that ended a command: 2 bad usage or config, else 1. */
export function exitCodeOf(err: unknown): number {
  return isStartupError(err) ? STARTUP_ERRORS[err.code].exitCode : 1
}

/** An invalid config: every problem, each with the path of its key. */
export class ConfigError extends StartupError {
  declare readonly code: 'config_invalid'
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super('config_invalid', `invalid config (${source}):\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
  }
}

/** Branch on the code, not the class: true for every invalid-config error. */
export function isConfigError(err: unknown): err is ConfigError {
  return (err as { code?: unknown } | null)?.code === 'config_invalid'
}
