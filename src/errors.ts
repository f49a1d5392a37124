// The one catalogue of errors the proxy itself generates. Every response the proxy makes up
// carries `x-sidecar-error: <code>`; the code is stable (dashboards, alerts and clients key on
// it), the status follows nginx/Envoy conventions. Codes are lower_snake so they can never clash
// with Node's or undici's UPPER_CASE `err.code` values: branch on `err.code`, never instanceof.

export const ERRORS = {
  bad_request: { status: 400, message: 'malformed request' },
  request_timeout: { status: 408, message: 'the request did not arrive within the listener timeouts' },
  body_too_large: { status: 413, message: 'request body larger than limits.maxBodyBytes' },
  headers_too_large: {
    status: 431,
    message: 'request headers larger than limits.maxHeaderBytes or more than limits.maxHeaderCount',
  },
  method_not_allowed: { status: 405, message: 'method not supported by a reverse proxy' },
  http_version_not_supported: { status: 505, message: 'the proxy speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (over TLS)' },
  // 499 is nginx's "client closed request": logged and counted, never sent (nobody is listening).
  unsupported_transfer_encoding: {
    status: 501,
    message: 'request Transfer-Encoding other than chunked: the proxy would pass a coded body off as plain',
  },
  client_closed: { status: 499, message: 'the client went away before the response was complete' },
  internal: { status: 500, message: 'internal proxy error' },
  upstream_refused: { status: 502, message: 'the upstream refused the connection' },
  upstream_unreachable: { status: 502, message: 'the upstream address could not be reached' },
  upstream_reset: { status: 502, message: 'the upstream closed the connection before the response was complete' },
  upstream_bad_response: { status: 502, message: 'the upstream sent a malformed response' },
  upstream_connect_timeout: { status: 504, message: 'the upstream did not accept the connection in time' },
  upstream_timeout: { status: 504, message: 'the upstream did not respond in time (retry.perTryTimeoutMs or limits.requestTimeoutMs)' },
  upstream_unhealthy: { status: 503, message: 'the backend fails its health checks and did not answer this request either' },
  circuit_open: { status: 503, message: 'the circuit breaker for the backend is open: it failed too often and is resting' },
  no_backend: { status: 503, message: 'no backend can take the request' },
  local_resources_exhausted: {
    status: 503,
    message: 'the proxy is out of file descriptors (ulimit -n) or socket memory for a new upstream connection',
  },
  overloaded: { status: 503, message: 'the backend has limits.maxConcurrentRequests in flight and limits.maxPendingRequests waiting' },
} as const satisfies Record<string, { status: number; message: string }>

export type ErrorCode = keyof typeof ERRORS

export class SidecarError extends Error {
  readonly code: ErrorCode
  readonly status: number
  /** Sent as Retry-After when set: when trying again makes sense. */
  readonly retryAfterSeconds: number | undefined
  /** What this occurrence adds to the catalogue message. */
  readonly detail: string | undefined

  constructor(code: ErrorCode, options?: { cause?: unknown; detail?: string; retryAfterSeconds?: number }) {
    const entry = ERRORS[code]
    super(options?.detail ? `${entry.message}: ${options.detail}` : entry.message, { cause: options?.cause })
    this.name = 'SidecarError'
    this.code = code
    this.status = entry.status
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
