// The client-facing listener: plain HTTP/1.1, or TLS with HTTP/1.1 and (by ALPN) HTTP/2 on the
// same port. It builds Node's server objects with the timeouts and size limits, and wires each
// request through the checks (validate.ts), the pipeline (translate.ts) and the connection
// bookkeeping (connections.ts). What the HTTP/1 parser refuses (malformed requests, header
// blocks over the byte cap, timeouts) never reaches the pipeline and is answered here, with
// the same local replies (pipeline/local-reply.ts).
import http from 'node:http'
import http2 from 'node:http2'
import https from 'node:https'
import type net from 'node:net'
import type { AddressInfo, Socket } from 'node:net'
import type { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { Clock } from '../clock.js'
import { ERRORS, SidecarError } from '../errors.js'
import { acceptsTrailers, newRequestId, requestIdFrom, type ForwardingInfo } from '../headers.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { release } from '../pipeline/compose.js'
import { Cancel } from '../pipeline/cancel.js'
import { isGrpc, localReply } from '../pipeline/local-reply.js'
import type { BufferBudget, BufferHolder } from '../pipeline/buffers.js'
import { BODY_MIN_RATE, KEEPS_UP } from '../pipeline/pressure.js'
import type { ClientProgress, Handler, ProxyRequest, ProxyResponse, Reply, RequestContext, RequestOutcome, Resource } from '../pipeline/types.js'
import { Connections, type Http1Conn } from './connections.js'
import { AbuseReport } from './abuse.js'
import { Admission, type AdmissionLimits } from './admission.js'
import { ClientIdentity } from './client-identity.js'
import { guardSession, spendOnRefusal } from './h2-guard.js'
import { listenOn } from './listen.js'
import { LoadShedder } from './shedding.js'
import { joinTunnel, type TunnelEnd } from './tunnel.js'
import { createServers, secureContext, type ServerLimits } from './servers.js'
import { rotateTicketKeys, type ListenerTlsOptions, type Served } from './tls.js'
import { Http2Request, clientAddressOf, completed, declaredBytes, sentStatus, toProxyRequest, verifiedSubject, writeRaw, writeResponse, type Request, type Response, type Stall } from './translate.js'
import { CONNECT_REFUSED, checkHttp1Request, checkHttp2Request, checkUpgradeRequest, parserErrorCode, type Refusal } from './validate.js'

/** Node's server objects' limits (servers.ts), and what the listener itself enforces. */
export interface ListenerOptions extends ServerLimits, AdmissionLimits {
  host: string
  port: number
  trustForwardedHeaders: boolean
  /** Peers whose forwarding headers are believed, and where they name the client
   *  (client-identity.ts). */
  trustedProxies: readonly string[]
  clientHeader: string
  headersWithUnderscores: 'drop' | 'allow'
  maxTunnels: number
  tunnelIdleTimeoutMs: number
  sendIdleTimeoutMs: number
  maxStreamResetsPer10s: number
  maxEventLoopDelayMs: number
}

export interface ClientsStatus {
  /** How a request's client is named, in order of preference. */
  keyedBy: string[]
  /** null: off. */
  maxRequestsPerClient: number | null
  maxConnectionsPerClient: number | null
  /** With a per-client limit on: the clients holding most requests, then connections. */
  busiest: Array<{ client: string; requests: number; connections: number }>
}

export interface ListenerDeps {
  logger: Logger
  metrics: Metrics
  clock: Clock
  /** The event loop's delay (ms) to shed load by; the real loop's unless a test gives one. */
  loopDelay?: () => number
  /** The ceiling for bytes held for slow peers, which a stalled answer's are charged to. */
  buffers?: BufferBudget
}

export class Listener {
  readonly server: net.Server
  readonly protocol: 'http' | 'https'
  private readonly connections: Connections
  private readonly shedder: LoadShedder
  private readonly admission: Admission
  private readonly identity: ClientIdentity
  private readonly abuse: AbuseReport
  /** HTTP/1 connections whose last request was refused before the pipeline: answered, closing. */
  private readonly refusedOn = new WeakSet<Socket>()
  /** Each HTTP/2 session's own socket. */
  private readonly sockets = new WeakMap<http2.ServerHttp2Session, Socket>()
  private stopTicketRotation: (() => void) | undefined
  /** The socket of the HTTP/2 session being made (see the constructor). */
  private h2Socket: Socket | undefined
  /** The HTTP/2 request of each stream being answered. */
  private readonly onStream = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]) => this.onArrival(stream, headers, raw)

  constructor(
    private readonly opts: ListenerOptions,
    private readonly handler: Handler,
    private readonly deps: ListenerDeps,
  ) {
    this.protocol = opts.tls ? 'https' : 'http'
    this.connections = new Connections({
      ...deps,
      connectionClosed: (client) => this.admission.connectionClosed(client),
      evicted: (reason, client) => this.abuse.evicted('connections', reason, { client }),
    })
    this.shedder = new LoadShedder(opts.maxEventLoopDelayMs, deps.clock, deps.loopDelay)
    this.admission = new Admission(opts, this.shedder)
    this.identity = new ClientIdentity({ ...opts, verifiesClients: opts.tls !== false && opts.tls.clientCa !== undefined })
    this.abuse = new AbuseReport(deps)
    const servers = createServers(opts)
    this.server = servers.front
    this.server.on('connection', (socket: Socket) => this.onConnection(socket))
    const http1 = servers.http1
    http1.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res))
    http1.on('connection', (socket: Socket) => this.connections.addHttp1(socket))
    // HTTP/1.1 Upgrade (WebSocket): Node hands the connection over as a raw socket
    http1.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head))
    http1.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.onParserError(err, socket))
    // Expect: 100-continue is answered when the body is first wanted (see toProxyRequest), not
    // by Node at once: a request refused from its headers alone (too large, overloaded, no
    // backend) is refused without inviting the client to upload a body nobody will read.
    http1.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res, true))
    // CONNECT on HTTP/1 comes as a raw socket (on HTTP/2, validate.ts refuses it)
    http1.on('connect', (req: http.IncomingMessage, socket: Socket) => this.refuseRaw(socket, CONNECT_REFUSED, requestIdFrom(req.headers['x-request-id'])))
    // An HTTP/2 session's socket is out of reach once the session has it (session.socket is a
    // proxy that refuses to close it): taken here, just before Node makes the session on it.
    servers.http2?.prependListener('connection', (socket: Socket) => (this.h2Socket = socket))
    servers.http2?.on('session', (session: http2.ServerHttp2Session) => this.onSession(session))
    if (opts.tls) {
      // A handshake timeout only emits this event: the socket stays open until someone
      // destroys it, so without the destroy a stalled ClientHello held its connection forever.
      this.server.on('tlsClientError', (err: Error & { code?: string }, socket: Socket) => {
        deps.logger.debug({ reason: err.code ?? err.message }, 'TLS handshake failed')
        socket.destroy()
      })
    }
  }

  async listen(): Promise<AddressInfo> {
    const address = await listenOn(this.server, this.opts.host, this.opts.port, this.deps.logger, 'listener')
    if (this.opts.tls) this.stopTicketRotation = rotateTicketKeys(this.server as https.Server, this.deps.clock)
    this.shedder.start()
    return address
  }

  get inFlightCount(): number {
    return this.connections.inFlight
  }

  get connectionCount(): number {
    return this.connections.count
  }

  /** Client connections by state: handshake, silent, idle, busy, stalled (busy, every exchange
   *  stalled on its client for MIN_STALL_MS), tunnel. */
  connectionStates(): Record<string, number> {
    return this.connections.states()
  }

  get tunnelCount(): number {
    return this.connections.tunnelCount
  }

  /** Who the per-client limits count, by what key, and the clients holding most (GET /status). */
  clients(): ClientsStatus {
    const { maxRequestsPerClient, maxConnectionsPerClient } = this.opts
    return {
      keyedBy: this.identity.keyedBy,
      maxRequestsPerClient: maxRequestsPerClient ?? null,
      maxConnectionsPerClient: maxConnectionsPerClient ?? null,
      busiest: this.admission.busiest(10),
    }
  }

  /** New handshakes get `material`; established connections keep what they have. */
  setCertificate(served: Served): void {
    ;(this.server as https.Server).setSecureContext(secureContext(this.opts.tls as ListenerTlsOptions, served))
  }

  /** Drain, first step: still serving, but HTTP/1.1 answers say Connection: close and HTTP/2
   *  sessions get GOAWAY. */
  drain(): void {
    this.connections.drain()
  }

  /** Stops accepting, finishes what is in flight, cuts what outlives `timeoutMs` (connections.ts).
   *  Resolves with the number of requests cut. */
  close(timeoutMs: number): Promise<number> {
    this.stopTicketRotation?.()
    this.shedder.close()
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()))
    return this.connections.close(timeoutMs, stopped)
  }

  /** A TCP connection: admitted within the connection limits (at the total, in place of the
   *  one that has done least for longest: connections.ts makeRoom), else closed at once. */
  private onConnection(socket: Socket): void {
    const client = clientAddressOf(socket)
    const refused = this.admission.connection(client, !this.identity.trusts(client), () => this.connections.makeRoom())
    if (refused) {
      socket.destroy()
      return this.abuse.note(refused, OVER_CONNECTION_LIMITS, { client })
    }
    this.connections.add(socket, client)
  }

  private onSession(session: http2.ServerHttp2Session): void {
    const socket = this.h2Socket!
    this.h2Socket = undefined
    const client = clientAddressOf(socket)
    this.connections.addSession(session, socket)
    this.sockets.set(session, socket)
    session.on('stream', this.onStream)
    session.on('error', (err) => this.deps.logger.debug({ err: { message: err.message } }, 'HTTP/2 session error'))
    // An idle HTTP/2 connection is closed like an idle HTTP/1 keep-alive connection; one that
    // resets streams faster than a client honestly would is closed for it; every session that
    // ends takes its socket with it (h2-guard.ts).
    guardSession(session, socket, {
      maxStreamResetsPer10s: this.opts.maxStreamResetsPer10s,
      keepAliveTimeoutMs: this.opts.keepAliveTimeoutMs,
      clock: this.deps.clock,
      onAbuse: (resets) => this.abuse.note('stream_reset_flood', 'HTTP/2 connections closed for resetting streams or opening them past their limit', { resets, client }),
    })
  }

  /**
   * An HTTP/2 stream is begun on the next turn of the loop: by then nghttp2 has read the rest of
   * what arrived with it, and a stream the client already reset (rapid reset: thousands per read)
   * costs nothing more than Node's own objects for it, instead of a pipeline run each.
   */
  private onArrival(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, raw: string[]): void {
    // a reset by the client is no error of ours: 'close' (with its code) says it
    stream.on('error', noop)
    const startedAt = process.hrtime.bigint()
    setImmediate(() => {
      if (stream.destroyed) return
      const session = stream.session as http2.ServerHttp2Session
      const req = new Http2Request(stream, headers, raw, this.sockets.get(session)!, session)
      this.onRequest(req, stream, headers.expect === '100-continue', startedAt)
    })
  }

  private onRequest(req: Request, res: Response, expectsContinue = false, startedAt = process.hrtime.bigint()): void {
    // The request object's kind, never the version the client wrote: `GET / HTTP/2.0` on the
    // HTTP/1 parser is an HTTP/1 request (and refused below).
    const h2 = req instanceof Http2Request
    const socket = req.socket as Socket
    const peer = clientAddressOf(socket)
    const session = h2 ? req.session : undefined
    const client = this.identity.keyed ? this.identity.keyOf(peer, socket, session ?? socket, req.headers) : peer
    const refused = this.admission.request(client, this.connections.inFlightOn(session, socket))
    if (refused) return this.shed(req, res, refused, h2, client)
    const target = h2 ? checkHttp2Request(req) : checkHttp1Request(req)
    if (target !== null && typeof target !== 'string') {
      if (this.admission.perClientRequests) this.admission.requestDone(client)
      return this.refuse(req, res, target, h2)
    }

    const answer = new Answer(this, req, res, h2 ? undefined : socket, this.deps.clock.now())
    const ctx = (answer.ctx = this.context(req, startedAt, peer, client, answer, session ?? socket))
    answer.conn = this.connections.begin(answer, session)
    const proxyReq = (answer.proxyReq = this.proxyRequest(req, h2, target, ctx))
    // `on`, not `once`: a response closes once, and `once` wraps its listener per call
    res.on('close', answer.closed)
    if (expectsContinue && proxyReq.body !== null) (proxyReq.body as Readable).once('resume', () => writeContinue(res, h2))
    // HTTP/1: one exchange at a time on a connection. A pipelined request waits until the one
    // before it is answered (nginx reads them so), instead of holding a slot and a connection to
    // the app while its answer queues behind the other's.
    if (answer.conn !== undefined && answer.conn.requests.length > 1) answer.waiting = () => this.handler(proxyReq, ctx, answer)
    else this.handler(proxyReq, ctx, answer)
  }

  /** A request's response closed (Answer): sent whole, or cut short. */
  closed(answer: Answer): void {
    if (answer.ended) return
    answer.ended = true
    const { req, res, proxyReq, ctx, http1, conn } = answer
    answer.goesOn()
    if (this.admission.perClientRequests) this.admission.requestDone(ctx.clientKey)
    const h2 = http1 === undefined
    const complete = completed(res, h2)
    if (!complete) {
      ctx.error ??= 'client_closed'
      ctx.signal.abort(new SidecarError('client_closed'))
    }
    const session = h2 ? (req as Http2Request).session : undefined
    const bytes = this.connections.end(answer, http1, conn, session) ?? declaredBytes(req as Http2Request, res as http2.ServerHttp2Stream)
    const next = conn?.requests[0] as Answer | undefined
    if (next?.waiting && !next.ended) {
      const go = next.waiting
      next.waiting = undefined
      go()
    }
    this.finish(ctx, proxyReq, {
      status: sentStatus(res, h2) ?? ERRORS.client_closed.status,
      complete,
      ...bytes,
      durationSeconds: Number(process.hrtime.bigint() - ctx.startedAt) / 1e9,
    })
  }

  /** The pipeline's answer to a request (Answer), written to its client. */
  answer(answer: Answer, response: ProxyResponse): void {
    const { req, res, ctx, http1 } = answer
    const h2 = http1 === undefined
    response.headers['x-request-id'] = ctx.id
    // After a request the catalogue says to close on (its framing or size), what is left on
    // the connection cannot be trusted, nor is a refused body worth reading: close, like nginx.
    const close = this.connections.mustClose(http1) || (ctx.error !== undefined && ERRORS[ctx.error].close)
    const body = response.body
    writeResponse(res, response, {
      h2,
      close,
      trailers: h2 || acceptsTrailers(req.headers.te),
      // only a streamed body can stall
      sendIdle: body === null || Buffer.isBuffer(body) ? undefined : { ms: this.opts.sendIdleTimeoutMs, clock: this.deps.clock, onCut: () => this.cutSlowReader(ctx), stall: answer },
    })
  }

  /** The budget a stalled answer's bytes are charged to. */
  get buffers(): BufferBudget | undefined {
    return this.deps.buffers
  }

  /** The respond layer turns every error into a response, and answers once: reaching here
   *  (or an answer that could not be written) is a bug. The client's connection is cut. */
  broken(err: unknown, ctx: RequestContext, client: { destroy(): unknown }): void {
    this.deps.logger.error({ err, requestId: ctx.id }, 'pipeline failed')
    client.destroy()
  }

  /**
   * An HTTP/1.1 Upgrade. The handshake goes through the pipeline like any request (pick, breaker,
   * overload, access log); a 101 from the app joins the two connections (tunnel.ts), any other
   * answer is passed on and the connection closes.
   */
  private onUpgrade(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    const startedAt = process.hrtime.bigint()
    const protocol = (req.headers.upgrade ?? '').trim()
    const checked = checkHttp1Request(req)
    const full = this.connections.tunnelCount >= this.opts.maxTunnels
    const refusal =
      checked !== null && typeof checked !== 'string'
        ? checked
        : (checkUpgradeRequest(protocol, req.headers) ??
          (full
            ? { code: 'too_many_tunnels' as const, detail: `${this.connections.tunnelCount} open` }
            : this.shedder.shedding
              ? { code: 'proxy_overloaded' as const, detail: 'the event loop runs late' }
              : null))
    if (refusal) return this.refuseRaw(socket, refusal, requestIdFrom(req.headers['x-request-id']))

    const peer = clientAddressOf(socket)
    const ctx = this.context(req, startedAt, peer, this.identity.keyed ? this.identity.keyOf(peer, socket, socket, req.headers) : peer, KEEPS_UP, socket)
    const leave = () => ctx.signal.abort(new SidecarError('client_closed'))
    socket.once('close', leave)
    socket.on('error', noop) // a reset before the answer: 'close' follows and says it
    const proxyReq = { ...this.proxyRequest(req, false, typeof checked === 'string' ? checked : null, ctx), upgrade: protocol }
    const base = this.connections.http1Of(socket) ?? { read: 0, written: 0 }
    const end = (status: number, complete: boolean, tunnel?: TunnelEnd) => {
      if (!complete) ctx.error ??= 'client_closed'
      this.finish(ctx, proxyReq, {
        status,
        complete,
        bytesIn: socket.bytesRead - base.read,
        bytesOut: socket.bytesWritten - base.written,
        durationSeconds: Number(process.hrtime.bigint() - startedAt) / 1e9,
        ...(tunnel && { tunnel }),
      })
    }
    this.handler(proxyReq, ctx, {
      ok: (response) => {
        socket.off('close', leave)
        response.headers['x-request-id'] = ctx.id
        const tunnel = response.tunnel
        if (socket.destroyed) {
          release(response)
          return end(ERRORS.client_closed.status, false)
        }
        if (!tunnel || response.status !== 101) {
          tunnel?.destroy()
          socket.once('close', () => end(response.status, socket.bytesWritten > base.written && !socket.errored))
          return writeRaw(socket, response)
        }
        this.connections.beginTunnel(socket)
        writeRaw(socket, response, protocol)
        joinTunnel(socket, head, tunnel, {
          idleTimeoutMs: this.opts.tunnelIdleTimeoutMs,
          onEnd: (reason) => {
            this.connections.endTunnel(socket)
            end(101, reason !== 'error', reason)
          },
        })
      },
      fail: (err) => this.broken(err, ctx, socket),
    })
  }

  /** An exchange evicted to make room at `resource` (Answer.evict): counted, warned of. */
  evicted(resource: Resource, reason: 'slow_reader' | 'slow_body', ctx: RequestContext): void {
    this.abuse.evicted(resource, reason, { requestId: ctx.id, client: ctx.clientAddress })
  }

  /** A client that stopped reading its answer was cut: its line says so, and it is counted. */
  private cutSlowReader(ctx: RequestContext): void {
    ctx.error = 'client_slow'
    this.abuse.note('client_slow', 'clients cut for reading nothing of their answers for limits.sendIdleTimeoutMs', { requestId: ctx.id, client: ctx.clientAddress })
  }

  /**
   * A request refused before anything is built for it: over its client's limit (429), or while
   * the proxy sheds load (503; on HTTP/2 the stream is refused with REFUSED_STREAM, which
   * clients retry on another connection).
   */
  private shed(req: Request, res: Response, code: 'proxy_overloaded' | 'client_over_limit', h2: boolean, client: string): void {
    this.abuse.note(code, code === 'proxy_overloaded' ? 'requests shed: the event loop runs late (from connections with others in flight)' : 'requests refused: over limits.maxRequestsPerClient', { client })
    // either way the connection's own doing: its refusals spend its budget (h2-guard.ts), and
    // one that keeps opening streams to be refused is closed
    if (h2) spendOnRefusal((req as Http2Request).session)
    if (h2 && code === 'proxy_overloaded') return void (res as http2.ServerHttp2Stream).close(http2.constants.NGHTTP2_REFUSED_STREAM)
    const reply = localReply(new SidecarError(code), { requestId: requestIdFrom(req.headers['x-request-id']), grpc: isGrpc(req.headers['content-type']) })
    writeResponse(res, reply, { h2, close: ERRORS[code].close, trailers: false })
  }

  /** A new request's context: its id, client, cancellation; filled in by the layers. */
  /** `connection`: the HTTP/1 socket or the HTTP/2 session it came on. */
  private context(req: Request, startedAt: bigint, peer: string, clientKey: string, progress: ClientProgress, connection: object): RequestContext {
    const cancel = new Cancel()
    return {
      id: requestIdFrom(req.headers['x-request-id']),
      clientAddress: peer,
      clientKey,
      connection,
      protocol: this.protocol,
      startedAt,
      signal: cancel,
      route: 'default',
      backend: undefined,
      attempt: 1,
      attemptSignal: cancel,
      error: undefined,
      onEnd: [],
      httpVersion: req.httpVersion,
      trace: undefined,
      progress,
    }
  }

  /** The request the app gets (translate.ts), and the count and log of dropped headers. */
  private proxyRequest(req: Request, h2: boolean, target: string | null, ctx: RequestContext) {
    const tls = this.opts.tls
    const forwarding: ForwardingInfo = {
      clientAddress: ctx.clientAddress,
      protocol: this.protocol,
      trustForwardedHeaders: this.opts.trustForwardedHeaders || this.identity.trusts(ctx.clientAddress),
      headersWithUnderscores: this.opts.headersWithUnderscores,
      ...(tls && tls.clientSubjectHeader && { clientSubjectHeader: tls.clientSubjectHeader, clientSubject: verifiedSubject(req.socket as TLSSocket) }),
    }
    const proxyReq = toProxyRequest(req, h2, target, ctx.id, forwarding)
    if (forwarding.dropped) {
      this.deps.metrics.countDroppedHeaders('underscore', forwarding.dropped.length)
      this.deps.logger.debug({ requestId: ctx.id, headers: forwarding.dropped }, 'request headers with underscores dropped')
    }
    return proxyReq
  }

  private finish(ctx: RequestContext, req: ProxyRequest, outcome: RequestOutcome): void {
    for (const fn of ctx.onEnd) {
      try {
        fn(outcome, req, ctx)
      } catch (err) {
        this.deps.logger.error({ err, requestId: ctx.id }, 'request end hook failed')
      }
    }
  }

  /** A request refused before the pipeline (validate.ts): the catalogue answer, then close. */
  private refuse(req: Request, res: Response, refusal: Refusal, h2: boolean): void {
    const requestId = requestIdFrom(req.headers['x-request-id'])
    this.record(refusal, req.socket as Socket, requestId)
    const reply = localReply(new SidecarError(refusal.code, { detail: refusal.detail }), { requestId, grpc: isGrpc(req.headers['content-type']) })
    writeResponse(res, reply, { h2, close: ERRORS[refusal.code].close, trailers: false })
    if (!h2) this.refusedOn.add(req.socket as Socket)
  }

  /**
   * What Node's HTTP/1 parser refused. Inside the body of the request in flight (a bad chunk),
   * that request is refused (if its answer has not begun): its body is cut, so the app never
   * gets it whole. After complete requests still being answered (pipelined garbage), those are
   * answered first, told the connection closes, and then it does: the app executed them. With
   * nothing in flight, the catalogue answer, then close.
   */
  private onParserError(err: NodeJS.ErrnoException, socket: Socket): void {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy()
    // what follows a request refused already (its head was answered, the connection closes after)
    if (this.refusedOn.has(socket)) return
    const conn = this.connections.http1Of(socket)
    const latest = conn?.requests.at(-1)
    const refusal = { code: parserErrorCode(err), detail: `${err.code}` }
    if (latest && !latest.req.complete) {
      // A client gone mid-body (EOF where the body should go on) is no bad request: the
      // request's own access line says client_closed. Nor may an answer under way be corrupted.
      if (err.code === 'HPE_INVALID_EOF_STATE' || latest.res.headersSent) return void socket.destroy()
    } else if (latest && conn) {
      if (conn.poisoned) return
      conn.poisoned = true
      return this.record(refusal, socket, newRequestId(), 'request refused by the parser; answering the requests before it, then closing')
    }
    this.refuseRaw(socket, refusal, newRequestId(), 'request refused by the parser')
  }

  /** A catalogue answer written on a raw HTTP/1 socket, which then closes. */
  private refuseRaw(socket: Socket, refusal: Refusal, requestId: string, msg = 'request refused'): void {
    this.record(refusal, socket, requestId, msg)
    writeRaw(socket, localReply(new SidecarError(refusal.code, { detail: refusal.detail }), { requestId, grpc: false }))
  }

  /** Logs a refusal (an info line, as an access line would be: a flood of them is no flood of
   *  warnings) and reports it: counted, and warned of at most once per 10 s per code. */
  private record(refusal: Refusal, socket: Socket, requestId: string, msg = 'request refused'): void {
    const fields = { error: refusal.code, reason: refusal.detail, client: clientAddressOf(socket), requestId }
    this.deps.logger.info(fields, msg)
    this.abuse.note(refusal.code, 'requests refused', fields)
  }
}

/**
 * A request in flight on the listener: its way back from the pipeline (the answer, written to
 * its client), the end of its response (`closed`, the response's close listener), and how its
 * client keeps up (`stalledFor`: the ceilings of pipeline/pressure.ts evict the most stalled).
 */
class Answer implements Reply, ClientProgress, Stall, BufferHolder {
  readonly closed = () => this.listener.closed(this)
  ctx!: RequestContext
  proxyReq!: ProxyRequest
  /** The HTTP/1 connection's state; undefined on HTTP/2. */
  conn: Http1Conn | undefined = undefined
  /** When its client stopped taking its streamed answer (0: it takes it). */
  pausedAt = 0
  /** While it has stopped: the bytes its body and connection hold, charged to the buffers. */
  held = 0
  /** Its response has closed (or its connection, before the response had it). */
  ended = false
  /** Cut to make room at a ceiling. */
  evicted = false
  /** HTTP/1, pipelined: begins once the requests before it on its connection are answered. */
  waiting: (() => void) | undefined = undefined

  constructor(
    private readonly listener: Listener,
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

const OVER_CONNECTION_LIMITS = 'connections refused: limits.maxConnections reached with none that may go in their place (none idle, silent or stalled on its client), or over limits.maxConnectionsPerClient'

/** Expect: 100-continue, answered. */
function writeContinue(res: Response, h2: boolean): void {
  if (h2) (res as http2.ServerHttp2Stream).additionalHeaders({ ':status': 100 })
  else (res as http.ServerResponse).writeContinue()
}

function noop(): void {}
