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
import { acceptsTrailers, requestIdFrom, type ForwardingInfo } from '../headers.js'
import type { Logger } from '../log.js'
import type { ListenerFigures, Metrics } from '../metrics.js'
import { release } from '../pipeline/compose.js'
import { Cancel } from '../pipeline/cancel.js'
import type { BufferBudget } from '../pipeline/buffers.js'
import { KEEPS_UP } from '../pipeline/pressure.js'
import type { ClientProgress, Handler, ProxyRequest, ProxyResponse, RequestContext, RequestOutcome, Resource } from '../pipeline/types.js'
import { Answer, type AnswerOwner } from './answer.js'
import { Connections } from './connections.js'
import { AbuseReport } from './abuse.js'
import { Admission, type AdmissionLimits } from './admission.js'
import { ClientIdentity } from './client-identity.js'
import { guardSession } from './h2-guard.js'
import { listenOn } from './listen.js'
import { Refusals } from './refusals.js'
import { LoadShedder } from './shedding.js'
import { joinTunnel, type TunnelEnd } from './tunnel.js'
import { createServers, secureContext, type ServerLimits } from './servers.js'
import { rotateTicketKeys, type ListenerTlsOptions, type Served } from './tls.js'
import { Http2Request, clientAddressOf, completed, declaredBytes, sentStatus, toProxyRequest, verifiedSubject, writeRaw, writeResponse, type Request, type Response } from './translate.js'
import { CONNECT_REFUSED, checkHttp1Request, checkHttp2Request, checkUpgradeRequest } from './validate.js'

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

export class Listener implements AnswerOwner {
  readonly server: net.Server
  readonly protocol: 'http' | 'https'
  private readonly connections: Connections
  private readonly shedder: LoadShedder
  private readonly admission: Admission
  private readonly identity: ClientIdentity
  private readonly abuse: AbuseReport
  private readonly refusals: Refusals
  private stopTicketRotation: (() => void) | undefined
  /** The socket of the HTTP/2 session being made (see the constructor). */
  private h2Socket: Socket | undefined

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
    this.refusals = new Refusals(deps.logger, deps.metrics, this.abuse, this.connections)
    const servers = createServers(opts)
    this.server = servers.front
    this.server.on('connection', (socket: Socket) => this.onConnection(socket))
    const http1 = servers.http1
    http1.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res))
    http1.on('connection', (socket: Socket) => this.connections.addHttp1(socket))
    // HTTP/1.1 Upgrade (WebSocket): Node hands the connection over as a raw socket
    http1.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head))
    http1.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.refusals.parserError(err, socket))
    // Expect: 100-continue is answered when the body is first wanted (see toProxyRequest), not
    // by Node at once: a request refused from its headers alone (too large, overloaded, no
    // backend) is refused without inviting the client to upload a body nobody will read.
    http1.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res, true))
    // CONNECT on HTTP/1 comes as a raw socket (on HTTP/2, validate.ts refuses it)
    http1.on('connect', (req: http.IncomingMessage, socket: Socket) => this.refusals.raw(socket, CONNECT_REFUSED, requestIdFrom(req.headers['x-request-id'])))
    // An HTTP/2 session's socket is out of reach once the session has it (session.socket is a
    // proxy that refuses to close it): taken here, just before Node makes the session on it.
    servers.http2?.prependListener('connection', (socket: Socket) => (this.h2Socket = socket))
    servers.http2?.on('session', (session: http2.ServerHttp2Session) => this.onSession(session))
    if (opts.tls) this.server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => this.refusals.handshakeFailed(err, socket))
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

  /** What sidecar_requests_in_flight and the connections' byte counters read when scraped. */
  figures(): ListenerFigures {
    const { received, sent } = this.connections.wireBytes()
    return { inFlight: this.connections.inFlight, receivedBytes: received, sentBytes: sent }
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
    // one listener per session, which knows its socket
    session.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]) => this.onArrival(stream, headers, raw, session, socket))
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
  private onArrival(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, raw: string[], session: http2.ServerHttp2Session, socket: Socket): void {
    // a reset by the client is no error of ours: 'close' (with its code) says it
    stream.on('error', noop)
    const startedAt = process.hrtime.bigint()
    setImmediate(() => {
      if (stream.destroyed) return
      const req = new Http2Request(stream, headers, raw, socket, session)
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
    if (refused) return this.refusals.shed(req, res, refused, h2, client)
    const target = h2 ? checkHttp2Request(req) : checkHttp1Request(req)
    if (target !== null && typeof target !== 'string') {
      if (this.admission.perClientRequests) this.admission.requestDone(client)
      return this.refusals.refuse(req, res, target, h2)
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
    if (refusal) return this.refusals.raw(socket, refusal, requestIdFrom(req.headers['x-request-id']))

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

}

const OVER_CONNECTION_LIMITS = 'connections refused: limits.maxConnections reached with none that may go in their place (none idle, silent or stalled on its client), or over limits.maxConnectionsPerClient'

/** Expect: 100-continue, answered. */
function writeContinue(res: Response, h2: boolean): void {
  if (h2) (res as http2.ServerHttp2Stream).additionalHeaders({ ':status': 100 })
  else (res as http.ServerResponse).writeContinue()
}

function noop(): void {}
