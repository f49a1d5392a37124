// The one source of truth for configuration: keys, defaults and the TypeScript types (inferred).
// Every default is visible here. Unknown keys are errors, so a typo never silently does nothing.
import { z } from 'zod'
import { nearest } from './nearest.js'
import { regexProblem } from './regex-guard.js'
import { cidrProblem, parseAddress, routeRetry, shadowOnlyBackends } from './settings.js'

const ms = (def: number) => z.number().int().min(1).max(86_400_000).default(def)

const addressSchema = z.string().refine((s) => parseAddress(s) !== null, {
  message: 'must be host:port (e.g. 0.0.0.0:8443 or [::1]:8443)',
})

/** A certificate without its key (or the reverse) is a half-done edit: say which is missing. */
function certAndKeyTogether(tls: { certFile?: string | undefined; keyFile?: string | undefined }, ctx: z.RefinementCtx): void {
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    const missing = tls.certFile === undefined ? 'certFile' : 'keyFile'
    ctx.addIssue({ code: 'custom', path: [missing], message: 'required: certFile and keyFile go together' })
  }
}

const backendUrl = z.string().refine(
  (s) => {
    try {
      const u = new URL(s)
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.pathname === '/' && !u.search && !u.username
    } catch {
      return false
    }
  },
  { message: 'must be an http:// or https:// URL with no path, e.g. http://127.0.0.1:8080' },
)

const backendSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'must be 1-63 of a-z, 0-9, - and _'),
  url: backendUrl,
  /** Share of requests, relative to the other backends' weights. 0 = never picked. */
  weight: z.number().int().min(0).max(1_000_000).default(100),
  /** Whether this backend's health gates the pod's readiness (while its weight is above 0).
   *  Default: true for a backend on a loopback address (the app in the pod), false for a remote
   *  one (a canary Service): a broken canary must cost its share of traffic, never the pod's
   *  readiness, or one bad canary would take every pod out of its Service at once. */
  gatesReadiness: z.boolean().optional(),
  /** How the backend is spoken to: HTTP/1.1, or HTTP/2 in the clear with prior knowledge (h2c:
   *  gRPC apps). Over h2c each connection carries up to 100 requests at once. */
  protocol: z.enum(['http1', 'h2c']).default('http1'),
  /** Upper bound on open connections to this backend (undici Pool `connections`). As many as
   *  limits.maxConcurrentRequests by default (Envoy's max_connections too): over HTTP/1.1 each
   *  request in flight needs one, and slow clients holding some must leave the rest to others. */
  maxConnections: z.number().int().min(1).max(10_000).default(1024),
  connectTimeoutMs: ms(2_000),
  /** Idle keep-alive sockets are closed after this; keep it below the app's own keep-alive
   *  timeout (Node's default is 5 s) or a request may land on a socket the app just closed. */
  idleTimeoutMs: ms(4_000),
  /** Active health checks (like Envoy's): a GET every intervalMs decides whether the backend
   *  is healthy; the pod is ready only while every backend with weight > 0 is. */
  /** For an https:// backend (another pod's sidecar): how it is verified and who we are to it.
   *  Without it: the system CAs, the URL's host, no client certificate. The files are watched
   *  and reloaded like the listener's; new connections use the last good set. */
  tls: z
    .strictObject({
      /** PEM bundle of the CAs the backend's certificate must chain to (default: the system's). */
      caFile: z.string().min(1).optional(),
      /** A client certificate and key presented to a backend that asks for one (mTLS). */
      certFile: z.string().min(1).optional(),
      keyFile: z.string().min(1).optional(),
      /** The name sent in SNI and checked against the backend's certificate (default: the URL's host). */
      serverName: z
        .string()
        .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, 'must be a DNS name, e.g. shop-canary.default.svc')
        .optional(),
    })
    .superRefine(certAndKeyTogether)
    .optional(),
  /** A limit on the requests in flight to this backend, past which requests wait in line
   *  (limits.maxPendingRequests of them, for maxWaitMs at most), then get 503
   *  concurrency_limited. `adaptive`: the limit found from the app's latency (Envoy's gradient
   *  controller, upstream/concurrency.ts); `fixed`: a number. Off without it. */
  concurrency: z
    .strictObject({
      adaptive: z
        .strictObject({
          min: z.number().int().min(1).max(10_000).default(3),
          max: z.number().int().min(1).max(100_000).default(1000),
          sampleWindowMs: ms(100),
          percentile: z.number().gt(0, 'must be above 0 (0.5 is the median)').max(1).default(0.5),
          tolerance: z.number().min(0).max(10).default(0.25),
          minRttIntervalMs: ms(60_000),
          minRttRequests: z.number().int().min(1).max(100_000).default(50),
          jitter: z.number().min(0).max(0.5).default(0.1),
        })
        .refine((a) => a.min <= a.max, { path: ['min'], message: 'must not exceed max' })
        .optional(),
      fixed: z.number().int().min(1).max(1_000_000).optional(),
      /** How long a request may wait for its turn. */
      maxWaitMs: ms(1_000),
    })
    .refine((c) => (c.adaptive === undefined) !== (c.fixed === undefined), { message: 'takes exactly one of adaptive: {...} or fixed: N' })
    .optional(),
  healthCheck: z
    .strictObject({
      path: z.string().startsWith('/', 'must start with /').default('/'),
      intervalMs: ms(2_000),
      timeoutMs: ms(1_000),
      /** Consecutive passes that make an unhealthy backend healthy. */
      healthyThreshold: z.number().int().min(1).max(100).default(1),
      /** Consecutive failures that make a healthy backend unhealthy. */
      unhealthyThreshold: z.number().int().min(1).max(100).default(3),
      /** Statuses that pass, as codes or ranges: [200, "300-399"]. */
      expectedStatuses: z
        .array(z.union([z.number().int().min(100).max(599), z.string().regex(/^[1-5]\d\d-[1-5]\d\d$/, 'must be a status or a range like "200-399"')]))
        .min(1)
        .default(['200-399']),
      /** Instead of a GET: the standard gRPC health check (grpc.health.v1.Health/Check) of this
       *  service ("" is the server as a whole); it passes on SERVING. Needs protocol: h2c. */
      grpc: z.strictObject({ service: z.string().max(200).default('') }).optional(),
    })
    .refine((h) => h.timeoutMs <= h.intervalMs, { path: ['timeoutMs'], message: 'must not exceed healthCheck.intervalMs' })
    .prefault({}),
})
  .refine((b) => b.healthCheck.grpc === undefined || b.protocol === 'h2c', { path: ['healthCheck', 'grpc'], message: 'needs protocol: h2c (gRPC is HTTP/2)' })
  .refine((b) => b.protocol !== 'h2c' || b.url.startsWith('http:'), { path: ['protocol'], message: 'h2c is HTTP/2 in the clear: the url must be http://' })
  .refine((b) => b.tls === undefined || b.url.startsWith('https:'), { path: ['tls'], message: 'is for https:// backends: this url is http://, spoken in the clear' })
  .transform((b) => ({ ...b, gatesReadiness: b.gatesReadiness ?? isLoopbackUrl(b.url) }))

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s)
    return u.protocol === 'http:' || u.protocol === 'https:'
  } catch {
    return false
  }
}

/** An OTLP endpoint with no path is the collector's base URL: traces go to /v1/traces. */
export function tracesUrl(endpoint: string): string {
  const u = new URL(endpoint)
  return u.pathname === '/' ? `${u.origin}/v1/traces${u.search}` : endpoint
}

const WILDCARD = new Set(['0.0.0.0', '::', '[::]'])

/** Two addresses one process cannot both bind: the same port (not 0, "any") on the same host,
 *  or on a host and the wildcard that covers it. */
function sameSocket(a: { host: string; port: number }, b: { host: string; port: number }): boolean {
  return a.port !== 0 && a.port === b.port && (a.host === b.host || WILDCARD.has(a.host) || WILDCARD.has(b.host))
}

/** True for http://127.x.x.x, http://[::1] and http://localhost: the app in the pod. */
export function isLoopbackUrl(url: string): boolean {
  const host = new URL(url).hostname
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host)
}

const DEFAULT_BACKEND_URL = 'http://127.0.0.1:8080'

/** retry's fields, without defaults: the top-level `retry` gives them defaults, a route's
 *  `retry` leaves out what it takes from the top level. */
const RETRY = {
  attempts: z.number().int().min(1).max(5),
  perTryTimeoutMs: z.number().int().min(1).max(86_400_000),
  retryOn: z.array(
    z.enum([
      'connect-failure',
      'refused',
      'reset',
      'gateway-error',
      'retriable-status-codes',
      'unavailable',
      'resource-exhausted',
      'deadline-exceeded',
      'cancelled',
      'internal',
    ]),
  ),
  statusCodes: z.array(z.number().int().min(400).max(599)),
  methods: z.array(z.string().regex(/^[A-Z]+$/, 'must be an upper-case method')),
  backoffMs: z.number().int().min(1).max(86_400_000),
  ratio: z.number().min(0).max(1),
  minPerSecond: z.number().int().min(0).max(10_000),
  windowMs: z.number().int().min(1000).max(600_000),
  maxReplayBytes: z.number().int().min(0).max(16 * 1024 * 1024),
}

/** A regular expression the route matcher may run on a client's input (config/regex-guard.ts). */
const guardedRegex = z.string().superRefine((source, ctx) => {
  const problem = regexProblem(source)
  if (problem !== null) ctx.addIssue({ code: 'custom', message: problem })
})

/** A path as requests are matched against it: normalised (no empty, `.` or `..` segments, no
 *  percent-escapes), so that a route cannot be written that no request could ever match. */
const matchPath = z
  .string()
  .startsWith('/', 'must start with /')
  .max(2048)
  .refine((p) => !p.includes('%') && !p.includes('//') && !/\/\.\.?(\/|$)/.test(p) && !p.includes('?'), {
    message: 'must be a plain normalised path (no %-escapes, //, /./, /../ or ?): requests are matched after normalisation',
  })

const lowerHeaderName = z.string().regex(/^[a-z0-9-]+$/, 'must be a lower-case header name')

/** A share of requests, 0-100; fractions allowed (0.5: one request in 200). */
const percent = z.number().min(0, 'must be >= 0').max(100, 'must be <= 100')

/** Faults injected on purpose (Envoy's fault filter, Istio's HTTPFaultInjection): to see how
 *  callers cope with a slow or failing service. Never reaches the app when it aborts. */
const faultSchema = z
  .strictObject({
    /** Wait `ms` before the request is forwarded, for `percent` of requests. */
    delay: z.strictObject({ ms: z.number().int().min(1).max(600_000, 'must be <= 600000 (10 minutes)'), percent }).optional(),
    /** Answer `status` (fault_injected) instead of forwarding, for `percent` of requests; a gRPC
     *  request gets `grpcStatus` (default 14, UNAVAILABLE). */
    abort: z
      .strictObject({
        status: z.number().int().min(200).max(599),
        grpcStatus: z.number().int().min(1).max(16).optional(),
        percent,
      })
      .optional(),
    /** Let callers ask for a fault per request (x-sidecar-fault-delay-ms, x-sidecar-fault-abort).
     *  Those headers never reach the app either way. */
    headerControl: z.boolean().default(false),
  })
  .refine((f) => f.delay !== undefined || f.abort !== undefined || f.headerControl, { message: 'needs delay, abort or headerControl: true' })

/** A copy of each request (fire and forget) to a shadow backend; its answer is thrown away. */
const mirrorSchema = z.strictObject({
  /** A backend in `backends` (weight 0: it takes mirrored copies only). */
  backend: z.string().min(1),
  /** Share of requests copied, 0-100 (fractions allowed). */
  percent: percent.default(100),
  /** Copies in flight at once; past it, copies are dropped (counted), never queued. */
  maxInFlight: z.number().int().min(1).max(100_000).default(64),
})

export type FaultConfig = z.output<typeof faultSchema>
export type MirrorConfig = z.output<typeof mirrorSchema>

const routeSchema = z
  .strictObject({
    /** Names the route in metrics, the access log and /status; "default" is the top level's. */
    name: z
      .string()
      .regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'must be 1-63 of a-z, 0-9, - and _')
      .refine((n) => n !== 'default', { message: '"default" names the top-level settings (requests no route matches)' }),
    /** Which requests the route takes; every condition given must hold. No path form: every path. */
    match: z
      .strictObject({
        /** A plain string prefix of the normalised path: end it with / to match whole segments. */
        pathPrefix: matchPath.optional(),
        /** The whole normalised path, exactly (the query is never part of it). */
        path: matchPath.optional(),
        /** A regular expression searched in the normalised path (anchor it with ^ and $). */
        pathRegex: guardedRegex.optional(),
        /** Upper-case methods; HEAD does not match GET. */
        methods: z.array(z.string().regex(/^[A-Z]+$/, 'must be an upper-case method')).min(1).optional(),
        /** Header name -> exact value, or { regex }; a repeated header matches when one value does. */
        headers: z.record(lowerHeaderName, z.union([z.string(), z.strictObject({ regex: guardedRegex })])).optional(),
      })
      .refine((m) => [m.pathPrefix, m.path, m.pathRegex].filter((p) => p !== undefined).length <= 1, {
        message: 'at most one of pathPrefix, path and pathRegex',
      })
      .prefault({}),
    /** Deadline for the response headers, all tries included (limits.requestTimeoutMs); 0: none. */
    timeoutMs: z.number().int().min(0).max(86_400_000).optional(),
    /** Merged over the top-level retry: what is left out comes from there (backoff and budget
     *  field by field). */
    retry: z
      .strictObject({
        attempts: RETRY.attempts.optional(),
        perTryTimeoutMs: RETRY.perTryTimeoutMs.optional(),
        retryOn: RETRY.retryOn.optional(),
        statusCodes: RETRY.statusCodes.optional(),
        methods: RETRY.methods.optional(),
        backoff: z.strictObject({ baseMs: RETRY.backoffMs.optional(), maxMs: RETRY.backoffMs.optional() }).optional(),
        budget: z
          .strictObject({ ratio: RETRY.ratio.optional(), minPerSecond: RETRY.minPerSecond.optional(), windowMs: RETRY.windowMs.optional() })
          .optional(),
        maxReplayBytes: RETRY.maxReplayBytes.optional(),
      })
      .optional(),
    limits: z.strictObject({ maxBodyBytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional() }).optional(),
    /** Backend name -> weight for this route's requests; backends not named get 0. */
    weights: z.record(z.string(), z.number().int().min(0).max(1_000_000)).optional(),
    /** A token bucket per key: requestsPerSecond refill, up to burst tokens; over it, 429. */
    rateLimit: z
      .strictObject({
        requestsPerSecond: z.number().positive().max(1_000_000),
        /** Requests allowed at once after a quiet spell (the bucket's size). Default: one second's worth. */
        burst: z.number().int().min(1).max(1_000_000).optional(),
        /** One bucket for the route, one per client address, or one per value of a header
         *  (`header:x-api-key`; requests without it share the bucket of their client address). */
        key: z
          .union([z.literal('route'), z.literal('client'), z.string().regex(/^header:[a-z0-9-]+$/, 'must be route, client or header:NAME (a lower-case header name)')])
          .default('route'),
        /** Keys remembered at once; the least recently used is forgotten past it. */
        maxKeys: z.number().int().min(1).max(1_000_000).default(10_000),
      })
      .transform((r) => ({ ...r, burst: r.burst ?? Math.max(1, Math.ceil(r.requestsPerSecond)) }))
      .optional(),
    /** A fixed answer from the proxy: the request never reaches a backend. */
    direct: z
      .strictObject({
        status: z.number().int().min(200).max(599),
        body: z.string().max(65_536).default(''),
      })
      .optional(),
    /** Replaces the top level's fault for this route; false: none here. */
    fault: z.union([z.literal(false), faultSchema]).optional(),
    /** Replaces the top level's mirror for this route; false: none here. */
    mirror: z.union([z.literal(false), mirrorSchema]).optional(),
  })
  .superRefine((r, ctx) => {
    if (r.direct === undefined) return
    for (const key of ['weights', 'retry', 'timeoutMs', 'mirror'] as const) {
      if (r[key] !== undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'has no meaning with direct (the proxy answers itself)' })
    }
  })

export type RouteConfig = z.output<typeof routeSchema>

export const configSchema = z
  .strictObject({
    listener: z
      .strictObject({
        address: addressSchema.default('0.0.0.0:8443'),
        /** false serves plain HTTP (also `--plaintext`). Without certFile/keyFile the proxy
         *  makes an ephemeral self-signed certificate in memory and warns. */
        tls: z
          .union([
            z.literal(false),
            z
              .strictObject({
                certFile: z.string().min(1).optional(),
                keyFile: z.string().min(1).optional(),
                minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
                handshakeTimeoutMs: ms(5_000),
                /** PEM bundle of CAs whose client certificates are accepted (mTLS). */
                clientCaFile: z.string().min(1).optional(),
                /** With clientCaFile: refuse handshakes without a valid client certificate. */
                requireClientCert: z.boolean().default(true),
                /** Send the verified client certificate's subject to the app in this header
                 *  (a client-sent header of that name is always dropped). */
                clientSubjectHeader: z
                  .string()
                  .regex(/^[a-z0-9-]+$/, 'must be a lower-case header name')
                  .optional(),
              })
              .superRefine((tls, ctx) => {
                certAndKeyTogether(tls, ctx)
                if (tls.clientSubjectHeader !== undefined && tls.clientCaFile === undefined) {
                  ctx.addIssue({ code: 'custom', path: ['clientSubjectHeader'], message: 'needs listener.tls.clientCaFile' })
                }
              }),
          ])
          .prefault({}),
        /** Offer HTTP/2 (ALPN h2) next to HTTP/1.1 on the TLS listener. */
        http2: z.boolean().default(true),
        /** Trust client-sent x-forwarded-* from every peer (only behind a proxy you control;
         *  trustedProxies says which peers, and makes their forwarded client the client). */
        trustForwardedHeaders: z.boolean().default(false),
        /** Peers whose forwarding headers are believed (an ingress, a load balancer): addresses
         *  or CIDRs. Their x-forwarded-* are passed on, and the client they name (clientHeader)
         *  is the client the per-client limits and rate limits count. Empty: nobody's. */
        trustedProxies: z
          .array(z.string().superRefine((cidr, ctx) => {
            const problem = cidrProblem(cidr)
            if (problem) ctx.addIssue({ code: 'custom', message: problem })
          }))
          .max(1000)
          .default([]),
        /** Where a trusted proxy names the client: `x-forwarded-for` (the last address not a
         *  trusted proxy), `forwarded` (RFC 7239, likewise), or a header whose whole value names
         *  it (`x-real-ip`, an API gateway's client id). */
        clientHeader: z.string().regex(/^[a-z0-9-]+$/, 'must be a lower-case header name').default('x-forwarded-for'),
        /** Request headers whose names hold `_`: CGI, WSGI, Rack and PHP fold `_` and `-`
         *  together, so `x_client_subject` would pass for `x-client-subject`. `drop` (nginx's
         *  and Envoy's default) removes them; `allow` forwards them. */
        headersWithUnderscores: z.enum(['drop', 'allow']).default('drop'),
        /** The client must send the whole header block within this. */
        headersTimeoutMs: ms(10_000),
        /** The client must send the whole request (headers and body) within this. */
        receiveTimeoutMs: ms(300_000),
        /** Idle client keep-alive connections are closed after this. */
        keepAliveTimeoutMs: ms(65_000),
      })
      .refine((l) => l.headersTimeoutMs <= l.receiveTimeoutMs, {
        path: ['headersTimeoutMs'],
        message: 'must not exceed listener.receiveTimeoutMs',
      })
      .prefault({}),
    admin: z.strictObject({ address: addressSchema.default('127.0.0.1:9901') }).prefault({}),
    backends: z
      .array(backendSchema)
      .min(1, 'needs at least one backend')
      .prefault([{ name: 'app', url: DEFAULT_BACKEND_URL }])
      .superRefine((backends, ctx) => {
        const seen = new Set<string>()
        backends.forEach((b, i) => {
          if (seen.has(b.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate backend name "${b.name}"` })
          seen.add(b.name)
        })
        if (backends.length > 0 && backends.every((b) => b.weight === 0)) {
          ctx.addIssue({ code: 'custom', message: 'at least one backend needs a weight above 0' })
        }
      }),
    routing: z
      .strictObject({
        /** Request header that overrides the weights: `always` sends the request to the canary,
         *  `never` to the stable backend (the first one). false turns the override off. Any
         *  client can send it: turn it off where clients must not choose. */
        header: z
          .union([z.literal(false), z.string().regex(/^[a-z0-9-]+$/, 'must be a lower-case header name')])
          .default('x-canary'),
        /** The backend `always` means. Default: the second backend. */
        canary: z.string().optional(),
        /** Keep each client on the backend it was first sent to, with a cookie naming it.
         *  Honoured while that backend has a weight above 0 and its breaker is not open. */
        sticky: z
          .strictObject({
            cookie: z.string().regex(/^[A-Za-z0-9_-]+$/, 'must be a cookie name: letters, digits, - and _').default('sidecar-backend'),
            maxAgeSeconds: z.number().int().min(1).max(31_536_000).default(86_400),
          })
          .optional(),
      })
      .prefault({}),
    retry: z
      .strictObject({
        /** Total tries per request, the first included. 1 turns retries off. */
        attempts: RETRY.attempts.default(2),
        /** Deadline for each try's response headers; without it each try gets what is left of
         *  limits.requestTimeoutMs. */
        perTryTimeoutMs: RETRY.perTryTimeoutMs.optional(),
        /** gRPC requests may also name gRPC statuses (unavailable, resource-exhausted,
         *  deadline-exceeded, cancelled, internal): retried, whatever the method, when the app
         *  answered with that status alone and the request's body was kept (maxReplayBytes). */
        retryOn: RETRY.retryOn.default(['connect-failure', 'refused', 'reset', 'gateway-error']),
        /** Extra statuses to retry, with retryOn: retriable-status-codes. */
        statusCodes: RETRY.statusCodes.default([]),
        /** Methods retried on any retryOn condition. Others (POST, PATCH) only when the request
         *  carries an Idempotency-Key header, or when the connection was refused (nothing sent). */
        methods: RETRY.methods.default(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']),
        backoff: z
          .strictObject({ baseMs: ms(25), maxMs: ms(250) })
          .refine((b) => b.baseMs <= b.maxMs, { path: ['baseMs'], message: 'must not exceed retry.backoff.maxMs' })
          .prefault({}),
        /** Retries allowed: ratio x requests over the last windowMs, plus minPerSecond. */
        budget: z
          .strictObject({
            ratio: RETRY.ratio.default(0.2),
            minPerSecond: RETRY.minPerSecond.default(10),
            windowMs: RETRY.windowMs.default(10_000),
          })
          .prefault({}),
        /** Request bodies up to this size are kept for a retry; larger ones stream, never retried. */
        maxReplayBytes: RETRY.maxReplayBytes.default(64 * 1024),
      })
      .prefault({}),
    /** Per-path policy: an ordered list, the first route whose match fits the request wins;
     *  a request no route matches takes the top-level settings (the route named "default"). */
    routes: z.array(routeSchema).max(1000).default([]),
    /** Faults injected into the default route's requests (routes[].fault replaces it per route). */
    fault: faultSchema.optional(),
    /** Copies of the default route's requests to a shadow backend (routes[].mirror replaces it). */
    mirror: mirrorSchema.optional(),
    circuitBreaker: z
      .strictObject({
        /** Open when more than this share of attempts failed in the rolling window... */
        errorThresholdPercentage: z.number().min(1).max(100).default(50),
        /** ...and at least this many attempts were made in it (opossum's own default, 0, would
         *  open on the very first failure). */
        volumeThreshold: z.number().int().min(1).max(100_000).default(20),
        rollingWindowMs: z.number().int().min(1000).max(600_000).default(10_000),
        /** How long an open breaker rests before one probe may pass (half-open). */
        resetTimeoutMs: ms(5_000),
      })
      .prefault({}),
    limits: z
      .strictObject({
        /** Deadline for the response headers, all tries and backoff included (504 upstream_timeout).
         *  It starts once the request is in: time spent waiting on the client is the client's. */
        requestTimeoutMs: ms(15_000),
        /** Longest silence allowed inside a streamed upstream response body. */
        responseIdleTimeoutMs: ms(60_000),
        maxHeaderBytes: z.number().int().min(1024).max(1_048_576).default(16_384),
        maxHeaderCount: z.number().int().min(8).max(1000).default(100),
        maxBodyBytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(100 * 1024 * 1024),
        /** HTTP/2: streams one client connection may have open at once. */
        maxConcurrentStreams: z.number().int().min(1).max(10_000).default(100),
        /** Per backend: requests in flight at once (until their response body is done)... */
        maxConcurrentRequests: z.number().int().min(1).max(1_000_000).default(1024),
        /** ...and requests waiting for one of those slots; past both, 503 overloaded at once. */
        maxPendingRequests: z.number().int().min(0).max(1_000_000).default(1024),
        /** Request bodies up to this size are received whole before a connection to the app is
         *  taken (a slow client holds none); larger ones, and gRPC's, stream. 0: always stream. */
        requestBufferBytes: z.number().int().min(0).max(16 * 1024 * 1024).default(64 * 1024),
        /** A response is read ahead of a slow client up to this much, so that the app's
         *  connection is free for typical answers; past it, the app waits for the client. */
        responseBufferBytes: z.number().int().min(0).max(64 * 1024 * 1024).default(256 * 1024),
        /** One ceiling for all those buffers together; past it, everything streams. */
        bufferMemoryBytes: z.number().int().min(0).max(4 * 1024 * 1024 * 1024).default(32 * 1024 * 1024),
        /** A request body with no byte for this long: 408 request_timeout (nginx client_body_timeout). */
        bodyIdleTimeoutMs: ms(60_000),
        /** A client that reads nothing of its response for this long is cut (nginx send_timeout). */
        sendIdleTimeoutMs: ms(60_000),
        /** Client connections at once; past it, new ones are closed at once. Size it with the
         *  container's memory: an idle TLS connection costs ~37 KiB (OpenSSL's buffers, which
         *  Node keeps), so the default's 2,048 take ~75 MiB over the proxy's own ~90. */
        maxConnections: z.number().int().min(1).max(1_000_000).default(2048),
        /** Per client: connections (by peer address; a trusted proxy's are not counted) and
         *  requests in flight (by the client's identity: listener.trustedProxies), 429
         *  client_over_limit past it. Off unless set: behind an ingress or a NAT one address
         *  is a crowd, and the front door judges by behaviour instead (a stalled client is
         *  evicted at a ceiling, a newcomer never refused while there is room). */
        maxConnectionsPerClient: z.number().int().min(1).max(1_000_000).optional(),
        maxRequestsPerClient: z.number().int().min(1).max(1_000_000).optional(),
        /** HTTP/2: streams a client may reset, or have refused (over maxRequestsPerClient, or
         *  shed while the proxy runs late), per connection in 10 s before the connection is
         *  closed (GOAWAY ENHANCE_YOUR_CALM): the rapid-reset attack, and floods of streams
         *  opened only to be refused. */
        maxStreamResetsPer10s: z.number().int().min(1).max(1_000_000).default(200),
        /** While the event loop runs this late (its 99th percentile over the last second), shed
         *  the new requests of connections that have others in flight (503 proxy_overloaded,
         *  HTTP/2: REFUSED_STREAM): the proxy keeps its core for what it has accepted, and a
         *  client asking one thing at a time is still let in. 0: never. */
        maxEventLoopDelayMs: z.number().int().min(0).max(60_000).default(500),
        /** Upgraded connections (WebSocket) open at once; past it, 503 too_many_tunnels. */
        maxTunnels: z.number().int().min(0).max(1_000_000).default(1024),
        /** A tunnel with no bytes either way for this long is closed. */
        tunnelIdleTimeoutMs: ms(3_600_000),
      })
      .prefault({}),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        accessLog: z.boolean().default(true),
      })
      .prefault({}),
    drain: z
      .strictObject({
        /** On SIGTERM or POST /drain: readiness fails at once, but requests are still served for
         *  this long (HTTP/1.1 answers say Connection: close, HTTP/2 gets GOAWAY), so that the
         *  endpoint is gone from every load balancer before the listener closes. */
        delayMs: z.number().int().min(0).max(600_000).default(5_000),
        /** From the start of the drain: in-flight requests are cut after this and the process
         *  exits. Keep terminationGracePeriodSeconds above it. */
        timeoutMs: ms(25_000),
      })
      .refine((d) => d.delayMs < d.timeoutMs, { path: ['delayMs'], message: 'must be below drain.timeoutMs' })
      .prefault({}),
    /** Distributed tracing (OpenTelemetry): absent, off, and nothing of it is loaded. Present
     *  (`tracing: {}` is enough), the proxy continues W3C traceparent (and B3) from its callers,
     *  records a SERVER span per request and a CLIENT span per attempt, passes the app a
     *  traceparent naming the attempt's span, and exports sampled spans over OTLP/HTTP. The
     *  standard OTEL_* environment variables fill in what is left unset here (config/load.ts). */
    tracing: z
      .strictObject({
        otlp: z
          .strictObject({
            /** The collector's traces URL; one with no path gets /v1/traces (like
             *  OTEL_EXPORTER_OTLP_ENDPOINT). */
            endpoint: z
              .string()
              .refine(isHttpUrl, { message: 'must be an http:// or https:// URL, e.g. http://otel-collector.observability:4318/v1/traces' })
              .transform(tracesUrl)
              .default('http://localhost:4318/v1/traces'),
            protocol: z.enum(['http/protobuf', 'http/json']).default('http/protobuf'),
            /** Sent with every export (an API key); shown redacted by GET /config. */
            headers: z.record(z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be a header name'), z.string()).default({}),
            /** Each export's deadline; a slow collector costs spans, never requests. */
            timeoutMs: ms(10_000),
          })
          .prefault({}),
        /** Share of requests without a sampled parent that are sampled (parent-based: a caller's
         *  sampled flag is followed, either way). */
        sampleRatio: z.number().min(0, 'must be between 0 and 1').max(1, 'must be between 0 and 1 (a share: 0.01 samples 1 request in 100)').default(0.01),
        serviceName: z.string().min(1).max(256).default('sidecar-proxy'),
        /** The export queue (OpenTelemetry's batch span processor, OTEL_BSP_*): past
         *  maxQueueSize, spans are dropped and counted in sidecar_spans_dropped_total. */
        batch: z
          .strictObject({
            maxQueueSize: z.number().int().min(1).max(1_000_000).default(2048),
            maxExportBatchSize: z.number().int().min(1).max(100_000).default(512),
            scheduledDelayMs: ms(5_000),
          })
          .refine((b) => b.maxExportBatchSize <= b.maxQueueSize, { path: ['maxExportBatchSize'], message: 'must not exceed tracing.batch.maxQueueSize' })
          .prefault({}),
      })
      .optional(),
  })
  .superRefine((config, ctx) => {
    const listen = parseAddress(config.listener.address)
    const admin = parseAddress(config.admin.address)
    if (listen && admin && sameSocket(listen, admin)) {
      ctx.addIssue({ code: 'custom', path: ['admin', 'address'], message: `the listener is already on ${config.listener.address}: give the admin port another port` })
    }
    const { canary } = config.routing
    if (canary !== undefined && !config.backends.some((b) => b.name === canary)) {
      ctx.addIssue({ code: 'custom', path: ['routing', 'canary'], message: `names no backend ("${canary}")` })
    }
    const mirrorTo = (mirror: { backend: string } | false | undefined, path: PropertyKey[]) => {
      if (!mirror || config.backends.some((b) => b.name === mirror.backend)) return
      const near = nearest(mirror.backend, config.backends.map((b) => b.name))
      ctx.addIssue({ code: 'custom', path: [...path, 'backend'], message: `no backend named "${mirror.backend}"${near === undefined ? '' : `; did you mean "${near}"?`}` })
    }
    mirrorTo(config.mirror, ['mirror'])
    // The override header sends a request to its backend whatever the weights: a backend that
    // takes mirrored copies only (weight 0) must not be one of its targets, or `x-canary:
    // always` (or `never`) would send real traffic to the shadow. (The default canary passes
    // such backends by: see defaultCanary.)
    if (config.routing.header !== false) {
      const shadows = shadowOnlyBackends(config)
      const first = config.backends[0]?.name
      if (first !== undefined && shadows.has(first)) ctx.addIssue({ code: 'custom', path: ['backends', 0], message: `"${first}" takes mirrored copies only (weight 0) but is first, the stable backend the override header's "never" sends to: list it later, or set routing.header: false` })
      const canary = config.routing.canary
      if (canary !== undefined && shadows.has(canary)) ctx.addIssue({ code: 'custom', path: ['routing', 'canary'], message: `"${canary}" takes mirrored copies only (weight 0): the override header's "always" would send it real traffic` })
    }
    const names = new Set<string>()
    config.routes.forEach((route, i) => {
      mirrorTo(route.mirror, ['routes', i, 'mirror'])
      if (names.has(route.name)) ctx.addIssue({ code: 'custom', path: ['routes', i, 'name'], message: `duplicate route name "${route.name}"` })
      names.add(route.name)
      if (route.weights !== undefined) {
        for (const name of Object.keys(route.weights)) {
          if (!config.backends.some((b) => b.name === name)) ctx.addIssue({ code: 'custom', path: ['routes', i, 'weights', name], message: `names no backend ("${name}")` })
        }
        if (!Object.values(route.weights).some((w) => w > 0)) ctx.addIssue({ code: 'custom', path: ['routes', i, 'weights'], message: 'at least one backend needs a weight above 0' })
      }
      const { backoff } = routeRetry(config.retry, route.retry)
      if (backoff.baseMs > backoff.maxMs) ctx.addIssue({ code: 'custom', path: ['routes', i, 'retry', 'backoff', 'baseMs'], message: `must not exceed the route's backoff.maxMs (${backoff.maxMs})` })
    })
  })
  .prefault({})

/** The validated, defaulted configuration. Frozen once loaded. */
export type Config = z.output<typeof configSchema>

export type RetryConfig = Config['retry']

