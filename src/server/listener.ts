// The client-facing listener: plain HTTP/1.1, or TLS with HTTP/1.1 and (by ALPN) HTTP/2 on the
// same port. It sets the timeouts and size limits, translates Node's request/response objects to
// and from the pipeline's, and tracks connections for graceful stop. What the HTTP/1 parser
// refuses (malformed requests, header blocks over the byte cap, timeouts) never reaches the
// pipeline and is answered here, with the same `x-sidecar-error` codes.
import http from 'node:http'
import http2 from 'node:http2'
import https from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { ERRORS, SidecarError, type ErrorCode } from '../errors.js'
import { requestIdFrom, upstreamRequestHeaders } from '../headers.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { Cancel } from '../pipeline/cancel.js'
import type { Handler, ProxyRequest, ProxyResponse, RequestContext, RequestOutcome } from '../pipeline/types.js'
import { listenOn } from './listen.js'
import { policy, type TlsMaterial } from './tls.js'

export interface ListenerTlsOptions {
  material: TlsMaterial
  minVersion: 'TLSv1.2' | 'TLSv1.3'
  handshakeTimeoutMs: number
  http2: boolean
  /** PEM CA bundle for client certificates (mTLS), and whether one is required. */
  clientCa?: string
  requireClientCert: boolean
  clientSubjectHeader?: string
}

export interface ListenerOptions {
  host: string
  port: number
  trustForwardedHeaders: boolean
  headersTimeoutMs: number
  receiveTimeoutMs: number
  keepAliveTimeoutMs: number
  maxHeaderBytes: number
  maxHeaderCount: number
  maxConcurrentStreams: number
  tls: ListenerTlsOptions | false
}

/** How long a stop waits for connections that were accepted but have sent nothing yet. */
const FRESH_GRACE_MS = 1000

type Request = http.IncomingMessage | http2.Http2ServerRequest
type Response = http.ServerResponse | http2.Http2ServerResponse
type AnyServer = http.Server | https.Server | http2.Http2SecureServer

export class Listener {
  readonly server: AnyServer
  readonly protocol: 'http' | 'https'
  /** Every TCP connection, for the final cut. */
  private readonly connections = new Set<Socket>()
  /** HTTP/2 sessions, closed with GOAWAY on stop. */
  private readonly sessions = new Set<http2.ServerHttp2Session>()
  /** HTTP/1 connections accepted that have not sent a request yet. */
  private readonly fresh = new Set<Socket>()
  /** Per HTTP/1 socket: requests in flight and the byte counters at the last request's end. */
  private readonly http1 = new Map<Socket, { busy: number; read: number; written: number }>()
  private inFlight = 0
  /** Draining: still serving, but HTTP/1.1 answers say Connection: close. */
  private draining = false
  /** Closing: the listening socket is closed; what is left finishes or is cut. */
  private closing = false
  private drained: (() => void) | null = null

  constructor(
    private readonly opts: ListenerOptions,
    private readonly handler: Handler,
    private readonly deps: { logger: Logger; metrics: Metrics },
  ) {
    this.protocol = opts.tls ? 'https' : 'http'
    this.server = createServer(opts, (req: Request, res: Response) => this.onRequest(req, res))
    this.server.on('connection', (socket: Socket) => {
      deps.metrics.openConnections.inc()
      this.connections.add(socket)
      socket.once('close', () => {
        deps.metrics.openConnections.dec()
        this.connections.delete(socket)
      })
    })
    this.server.on(opts.tls ? 'secureConnection' : 'connection', (socket: Socket & { alpnProtocol?: string | false }) => {
      if (socket.alpnProtocol === 'h2') return // HTTP/2 sessions are drained with GOAWAY
      this.fresh.add(socket)
      socket.once('close', () => this.fresh.delete(socket))
    })
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.onClientError(err, socket))
    // CONNECT: a raw socket on HTTP/1, a stream's request and response on HTTP/2
    this.server.on('connect', (req: Request, socket: Socket | http2.Http2ServerResponse) => {
      if (req instanceof http2.Http2ServerRequest) this.refuse(socket as http2.Http2ServerResponse, CONNECT_REFUSED, req.socket as Socket, true)
      else this.onConnect(socket as Socket)
    })
    if (opts.tls) {
      // A handshake timeout only emits this event: the socket stays open until someone
      // destroys it, so without the destroy a stalled ClientHello held its connection forever.
      this.server.on('tlsClientError', (err: Error & { code?: string }, socket: Socket) => {
        deps.logger.debug({ reason: err.code ?? err.message }, 'TLS handshake failed')
        socket.destroy()
      })
      this.server.on('session', (session: http2.ServerHttp2Session) => this.onSession(session))
    }
  }

  listen(): Promise<AddressInfo> {
    return listenOn(this.server, this.opts.host, this.opts.port, this.deps.logger, 'listener')
  }

  get inFlightCount(): number {
    return this.inFlight
  }

  /** New handshakes get `material`; established connections keep what they have. */
  setCertificate(material: TlsMaterial): void {
    ;(this.server as https.Server).setSecureContext(secureContext(this.opts.tls as ListenerTlsOptions, material))
  }

  /**
   * First step of a drain: keep accepting and serving, but ask clients to go elsewhere.
   * HTTP/1.1 responses say `Connection: close`; HTTP/2 sessions get GOAWAY (their open streams
   * finish, new streams go to a new connection, which is still accepted).
   */
  drain(): void {
    this.draining = true
    for (const session of this.sessions) session.close()
  }

  /**
   * Graceful stop: no new connections; idle HTTP/1 connections closed at once and busy ones
   * after their response (which says `Connection: close`); HTTP/2 sessions get GOAWAY and
   * finish their open streams. Whatever is still running after `timeoutMs` is cut. Resolves
   * with the number of requests that were cut.
   */
  async close(timeoutMs: number): Promise<number> {
    this.closing = true
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()))
    for (const session of this.sessions) session.close()
    for (const [socket, state] of this.http1) if (state.busy === 0) socket.end()
    const deadline = Date.now() + timeoutMs
    // A connection accepted just before the listener closed may not have sent its request yet:
    // give such connections up to FRESH_GRACE_MS to do so, then finish what is in flight.
    const freshUntil = Math.min(deadline, Date.now() + FRESH_GRACE_MS)
    for (;;) {
      const now = Date.now()
      if (this.inFlight > 0 && now < deadline) {
        let timer: NodeJS.Timeout | undefined
        await Promise.race([
          new Promise<void>((resolve) => (this.drained = resolve)),
          new Promise<void>((resolve) => (timer = setTimeout(resolve, deadline - now))),
        ])
        clearTimeout(timer)
      } else if (this.fresh.size > 0 && now < freshUntil) {
        await new Promise((resolve) => setTimeout(resolve, 10))
      } else {
        break
      }
    }
    const cut = this.inFlight
    if (cut === 0) {
      // Nothing is running: let the last responses leave the socket buffers (a destroy could
      // reset a connection whose final bytes are still queued), then cut what lingers.
      for (const socket of this.connections) socket.end()
      await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(1000, deadline - Date.now()))))])
    }
    for (const session of this.sessions) session.destroy()
    for (const socket of this.connections) socket.destroy()
    await stopped
    return cut
  }

  private onSession(session: http2.ServerHttp2Session): void {
    this.sessions.add(session)
    session.once('close', () => this.sessions.delete(session))
    session.on('error', (err) => this.deps.logger.debug({ err: { message: err.message } }, 'HTTP/2 session error'))
    // An idle HTTP/2 connection is closed like an idle HTTP/1 keep-alive connection.
    session.setTimeout(this.opts.keepAliveTimeoutMs, () => session.close())
    if (this.closing) session.close()
  }

  private onRequest(req: Request, res: Response): void {
    const startedAt = process.hrtime.bigint()
    // The request object's kind, never the version the client wrote: `GET / HTTP/2.0` on the
    // HTTP/1 parser is an HTTP/1 request (and refused below).
    const h2 = req instanceof http2.Http2ServerRequest
    const socket = req.socket as Socket
    const target = h2 ? checkHttp2Request(req as http2.Http2ServerRequest) : checkHttp1Request(req as http.IncomingMessage)
    if (target !== null && typeof target !== 'string') {
      this.refuse(res, target, socket, h2)
      return
    }
    const cancel = new Cancel()
    const id = requestIdFrom(req.headers['x-request-id'])
    const clientAddress = stripV4Mapped(socket.remoteAddress ?? '')
    const ctx: RequestContext = {
      id,
      clientAddress,
      protocol: this.protocol,
      startedAt,
      signal: cancel,
      backend: undefined,
      attempt: 1,
      attemptSignal: cancel,
      error: undefined,
      onEnd: [],
    }
    const conn = h2 ? undefined : this.http1Socket(socket)
    if (!h2) this.fresh.delete(socket)
    if (conn) conn.busy++
    this.inFlight++

    const cl = req.headers['content-length']
    const chunked = req.headers['transfer-encoding'] !== undefined
    const hasBody = h2 ? !(req as http2.Http2ServerRequest).stream.endAfterHeaders : chunked || (cl !== undefined && cl !== '0')
    const contentLength = cl !== undefined && !chunked ? Number(cl) : null

    res.once('close', () => {
      // HTTP/2's compat response reports writableFinished even for a stream the client reset:
      // there, complete means "we ended it and the stream closed without an error code".
      const complete = h2
        ? res.writableEnded && (req as http2.Http2ServerRequest).stream.rstCode === http2.constants.NGHTTP2_NO_ERROR
        : res.writableFinished
      if (!complete) {
        ctx.error ??= 'client_closed'
        cancel.abort(new SidecarError('client_closed'))
      }
      this.inFlight--
      let bytesIn: number
      let bytesOut: number
      if (conn) {
        conn.busy--
        bytesIn = socket.bytesRead - conn.read
        bytesOut = socket.bytesWritten - conn.written
        conn.read = socket.bytesRead
        conn.written = socket.bytesWritten
      } else {
        // HTTP/2 multiplexes one connection: report the declared body lengths.
        bytesIn = contentLength ?? 0
        bytesOut = Number(res.getHeader('content-length') ?? 0)
      }
      this.finish(ctx, {
        status: res.headersSent ? res.statusCode : ERRORS.client_closed.status,
        complete,
        bytesIn,
        bytesOut,
        durationSeconds: Number(process.hrtime.bigint() - startedAt) / 1e9,
      })
      if (this.closing) {
        // end, not destroy: the response may still sit in the socket's buffer
        if (conn?.busy === 0) socket.end()
        if (this.inFlight === 0) this.drained?.()
      }
    })

    const tls = this.opts.tls
    const proxyReq: ProxyRequest = {
      method: req.method ?? 'GET',
      path: target ?? req.url ?? '/',
      headers: upstreamRequestHeaders(req.headers, id, {
        clientAddress,
        protocol: this.protocol,
        trustForwardedHeaders: this.opts.trustForwardedHeaders,
        ...(tls && tls.clientSubjectHeader && { clientSubjectHeader: tls.clientSubjectHeader, clientSubject: verifiedSubject(socket as TLSSocket) }),
      }),
      body: hasBody ? req : null,
      contentLength,
      headerCount: h2 ? countRegularHeaders(req.rawHeaders) : req.rawHeaders.length / 2,
      transferEncoding: req.headers['transfer-encoding'] ?? null,
    }
    this.handler(proxyReq, ctx).then(
      (response) => this.respond(res, response, ctx, h2),
      (err: unknown) => {
        // The respond layer turns every error into a response; reaching here is a bug.
        this.deps.logger.error({ err, requestId: id }, 'pipeline rejected')
        res.destroy()
      },
    )
  }

  private http1Socket(socket: Socket) {
    let state = this.http1.get(socket)
    if (!state) {
      state = { busy: 0, read: 0, written: 0 }
      this.http1.set(socket, state)
      socket.once('close', () => this.http1.delete(socket))
    }
    return state
  }

  private respond(res: Response, response: ProxyResponse, ctx: RequestContext, h2: boolean): void {
    const body = response.body
    if (h2 ? (res as http2.Http2ServerResponse).stream.destroyed : (res as http.ServerResponse).destroyed) {
      // The client left while the pipeline worked: release the upstream body. Destroying it may
      // emit 'error'; with no listener that would crash the process.
      if (body !== null && !Buffer.isBuffer(body)) body.on('error', noop).destroy()
      return
    }
    response.headers['x-request-id'] = ctx.id
    // HTTP/2 has no Connection header; its sessions get GOAWAY instead. After a request the
    // proxy refused for its framing or size, what is left on the connection cannot be trusted
    // (nor is it worth reading a refused body to the end): close, like nginx.
    if (!h2 && (this.draining || this.closing || (ctx.error !== undefined && CLOSE_AFTER.has(ctx.error)))) response.headers.connection = 'close'
    res.writeHead(response.status, response.headers)
    if (body === null) {
      res.end()
    } else if (Buffer.isBuffer(body)) {
      res.end(body)
    } else {
      // Not stream.pipeline: it makes and aborts an AbortController per call, a measurable
      // share of the per-request cost. An upstream failure mid-body destroys `res` and with it
      // the connection (HTTP/1) or the stream (HTTP/2, RST_STREAM), so the client sees a
      // truncated response, never a short "complete" one. A client gone mid-body releases the
      // upstream body.
      body.once('error', (err) => res.destroy(err))
      res.once('close', () => {
        if (!body.readableEnded) body.on('error', noop).destroy()
      })
      body.pipe(res as NodeJS.WritableStream)
    }
  }

  private finish(ctx: RequestContext, outcome: RequestOutcome): void {
    for (const fn of ctx.onEnd) {
      try {
        fn(outcome)
      } catch (err) {
        this.deps.logger.error({ err, requestId: ctx.id }, 'request end hook failed')
      }
    }
  }

  /** A request refused before the pipeline (see `checkHttp1Request`): the catalogue answer, then close. */
  private refuse(res: Response, refusal: Refusal, socket: Socket, h2: boolean): void {
    const { code, detail } = this.record(refusal, socket)
    const body = JSON.stringify({ error: code, message: `${ERRORS[code].message}: ${detail}` }) + '\n'
    const headers: Record<string, string> = { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), 'x-sidecar-error': code }
    if (!h2) headers.connection = 'close'
    res.writeHead(ERRORS[code].status, headers)
    res.end(body)
  }

  /** Requests Node's HTTP/1 parser refused: answer with the catalogue code, then close. */
  private onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const code = clientErrorCode(err)
    const response = (socket as Socket & { _httpMessage?: http.ServerResponse })._httpMessage
    // A client gone mid-body (EOF where the body should go on) is no bad request: the request's
    // own access line says client_closed.
    const left = err.code === 'ECONNRESET' || (err.code === 'HPE_INVALID_EOF_STATE' && response !== undefined)
    if (left || !socket.writable || response?.headersSent) {
      socket.destroy()
      return
    }
    this.deps.metrics.countRejection(code)
    this.deps.logger.warn({ error: code, reason: err.code, client: stripV4Mapped(socket.remoteAddress ?? '') }, 'request refused by the parser')
    endWith(socket, code, ERRORS[code].message)
  }

  /** HTTP/1 CONNECT (Node hands it over as a raw socket): a reverse proxy is not a tunnel. */
  private onConnect(socket: Socket): void {
    const { code, detail } = this.record(CONNECT_REFUSED, socket)
    endWith(socket, code, `${ERRORS[code].message}: ${detail}`)
  }

  /** Counts and logs a refusal. */
  private record(refusal: Refusal, socket: Socket): Refusal {
    this.deps.metrics.countRejection(refusal.code)
    this.deps.logger.warn({ error: refusal.code, reason: refusal.detail, client: stripV4Mapped(socket.remoteAddress ?? '') }, 'request refused')
    return refusal
  }
}

/** Writes a whole catalogue answer on a raw socket and closes it. */
function endWith(socket: Socket, code: ErrorCode, message: string): void {
  const body = JSON.stringify({ error: code, message }) + '\n'
  socket.end(
    `HTTP/1.1 ${ERRORS[code].status} ${http.STATUS_CODES[ERRORS[code].status]}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-sidecar-error: ${code}\r\nconnection: close\r\n\r\n${body}`,
  )
}

interface Refusal {
  code: ErrorCode
  detail: string
}

const CONNECT_REFUSED: Refusal = { code: 'method_not_allowed', detail: 'CONNECT' }

/** Errors after which the client connection is closed rather than kept alive. */
const CLOSE_AFTER: ReadonlySet<ErrorCode> = new Set(['bad_request', 'unsupported_transfer_encoding', 'body_too_large', 'headers_too_large'])

/** host [":" port], host a DNS name, IPv4 or [IPv6] literal: no userinfo, path, spaces or controls. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d{1,5})?$/

/**
 * What Node's HTTP/1 parser lets through but RFC 9112 says a server must refuse (3.2: exactly
 * one valid Host on HTTP/1.1; 2.3: versions it does not speak), and the request-target forms a
 * reverse proxy does not forward (authority-form is CONNECT's, asterisk-form `OPTIONS *` asks
 * about the proxy, not the app). Returns the refusal, or the origin-form target to forward
 * (absolute-form `http://host/p` becomes `/p` when its authority is the Host; else null: as is).
 */
function checkHttp1Request(req: http.IncomingMessage): Refusal | string | null {
  const version = req.httpVersion
  if (version !== '1.1' && version !== '1.0') return { code: 'http_version_not_supported', detail: `HTTP/${version}` }
  let host: string | undefined
  let hosts = 0
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length === 4 && name.toLowerCase() === 'host') {
      hosts++
      host = raw[i + 1]
    }
  }
  if (hosts > 1) return { code: 'bad_request', detail: `${hosts} Host headers` }
  if (hosts === 0 && version === '1.1') return { code: 'bad_request', detail: 'no Host header' }
  if (host !== undefined && !AUTHORITY.test(host)) return { code: 'bad_request', detail: `invalid Host ${JSON.stringify(host.slice(0, 100))}` }
  const target = req.url ?? ''
  if (target.charCodeAt(0) === 47 /* / */) return null
  const absolute = /^https?:\/\/([^/?#]*)([^#]*)/i.exec(target)
  if (!absolute) return { code: 'bad_request', detail: 'request-target is neither a path nor an absolute URL (OPTIONS * included)' }
  if (host === undefined || absolute[1]!.toLowerCase() !== host.toLowerCase()) {
    return { code: 'bad_request', detail: 'absolute-form request-target names another authority than Host' }
  }
  const rest = absolute[2]!
  return rest.startsWith('/') ? rest : `/${rest}`
}

/** The methods Node's HTTP/1 parser takes (upper case): what an HTTP/1 listener can receive. */
const HTTP1_METHODS: ReadonlySet<string> = new Set(http.METHODS)

/**
 * The same rules for HTTP/2, where nghttp2 already refuses a missing or non-slash :path (but not
 * `*`) and connection-specific headers: one valid authority (RFC 9113 8.3.1: a Host beside
 * :authority must name the same one), no asterisk-form, and only the methods HTTP/1 clients can
 * send (a `get` would reach the app, whose HTTP/1 parser refuses it).
 */
function checkHttp2Request(req: http2.Http2ServerRequest): Refusal | null {
  if (!HTTP1_METHODS.has(req.method)) return { code: 'bad_request', detail: `method ${JSON.stringify(req.method.slice(0, 20))}` }
  const authority = req.headers[':authority']
  const host = req.headers.host
  const named = authority ?? host
  if (named === undefined) return { code: 'bad_request', detail: 'neither :authority nor Host' }
  if (!AUTHORITY.test(named)) return { code: 'bad_request', detail: `invalid authority ${JSON.stringify(named.slice(0, 100))}` }
  if (authority !== undefined && host !== undefined && authority.toLowerCase() !== host.toLowerCase()) {
    return { code: 'bad_request', detail: 'Host names another authority than :authority' }
  }
  if (req.headers[':path']?.charCodeAt(0) !== 47 /* / */) return { code: 'bad_request', detail: ':path is not a path (OPTIONS * included)' }
  return null
}

function createServer(opts: ListenerOptions, onRequest: (req: Request, res: Response) => void): AnyServer {
  const http1 = {
    headersTimeout: opts.headersTimeoutMs,
    requestTimeout: opts.receiveTimeoutMs,
    keepAliveTimeout: opts.keepAliveTimeoutMs,
    maxHeaderSize: opts.maxHeaderBytes,
    // how often Node checks the two timeouts above; its default (30 s) lets them overrun
    connectionsCheckingInterval: Math.min(1000, opts.headersTimeoutMs),
    // Node would silently drop headers past its count (Host among them); take them all (the
    // header block is bounded by maxHeaderSize) and let the limits layer answer 431.
    maxHeadersCount: 0,
    // Node's own check answers 400 without our error code; `refusal` checks Host instead.
    requireHostHeader: false,
    // Explicit, so that NODE_OPTIONS=--insecure-http-parser cannot reopen request smuggling.
    insecureHTTPParser: false,
  }
  const tls = opts.tls
  if (!tls) return Object.assign(http.createServer(http1, onRequest), http1)
  const secure = { ...secureContext(tls, tls.material), handshakeTimeout: tls.handshakeTimeoutMs, noDelay: true, ...clientAuth(tls) }
  if (!tls.http2) return Object.assign(https.createServer({ ...http1, ...secure }, onRequest), http1)
  // HTTP/2 with HTTP/1.1 fallback. The HTTP/1 side of this server reads its limits from the
  // same properties http.Server uses, so they are set on it after creation.
  const server = http2.createSecureServer(
    {
      ...secure,
      allowHTTP1: true,
      maxSessionMemory: 32, // MiB of buffered frames per connection before new streams are refused
      maxHeaderListPairs: opts.maxHeaderCount + 8, // pseudo-headers count too; the limits layer counts exactly
      settings: { maxConcurrentStreams: opts.maxConcurrentStreams, maxHeaderListSize: opts.maxHeaderBytes, enablePush: false },
    },
    onRequest,
  )
  return Object.assign(server, http1)
}

function secureContext(tls: ListenerTlsOptions, material: TlsMaterial) {
  return { ...policy(tls), cert: material.cert, key: material.key, ALPNProtocols: tls.http2 ? ['h2', 'http/1.1'] : ['http/1.1'] }
}

function clientAuth(tls: ListenerTlsOptions) {
  if (tls.clientCa === undefined) return {}
  return { ca: tls.clientCa, requestCert: true, rejectUnauthorized: tls.requireClientCert }
}

/** The client certificate's subject when the handshake verified it, e.g. `CN=billing,O=Acme`. */
function verifiedSubject(socket: TLSSocket): string | undefined {
  if (!socket.authorized) return undefined
  return socket.getPeerX509Certificate()?.subject.split('\n').join(',')
}

function countRegularHeaders(raw: string[]): number {
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.charCodeAt(0) !== 58 /* ':' */) n++
  return n
}

function clientErrorCode(err: NodeJS.ErrnoException): ErrorCode {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 'headers_too_large'
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 'request_timeout'
    default:
      return 'bad_request'
  }
}

function noop(): void {}

function stripV4Mapped(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address
}
