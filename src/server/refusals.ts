// Requests refused before the pipeline, and what Node's HTTP/1 parser refused: the catalogue's
// local reply (pipeline/local-reply.ts) written on the request's response or stream, or on the
// raw socket; logged at info, as an access line would be (a flood of them is no flood of
// warnings), and reported: counted, and warned of at most once per 10 s per code (abuse.ts).
import http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { ERRORS, SidecarError } from '../errors.js'
import { newRequestId, requestIdFrom } from '../headers.js'
import type { Logger } from '../log.js'
import type { HandshakeFailure, Metrics } from '../metrics.js'
import { isGrpc, localReply } from '../pipeline/local-reply.js'
import type { AbuseReport } from './abuse.js'
import type { Connections } from './connections.js'
import { spendOnRefusal } from './h2-guard.js'
import { clientAddressOf, writeRaw, writeResponse, type Http2Request, type Request, type Response } from './translate.js'
import { parserErrorCode, type Refusal } from './validate.js'

export class Refusals {
  /** HTTP/1 connections whose last request was refused before the pipeline: answered, closing. */
  private readonly refusedOn = new WeakSet<Socket>()

  constructor(
    private readonly logger: Logger,
    private readonly metrics: Metrics,
    private readonly abuse: AbuseReport,
    private readonly connections: Connections,
  ) {}

  /** A client's TLS handshake failed: counted by reason and logged at debug (a scanner makes
   *  hundreds), and the socket closed: a handshake timeout only emits the error, leaving the
   *  socket open until someone destroys it (a stalled ClientHello held its place forever). */
  handshakeFailed(err: Error & { code?: string }, socket: TLSSocket): void {
    const reason = handshakeFailure(err.code, socket.authorizationError)
    this.metrics.countHandshakeFailure(reason)
    this.logger.debug({ reason, code: err.code ?? err.message, client: clientAddressOf(socket) }, 'TLS handshake failed')
    socket.destroy()
  }

  /**
   * A request refused before anything is built for it: over its client's limit (429), or while
   * the proxy sheds load (503; on HTTP/2 the stream is refused with REFUSED_STREAM, which
   * clients retry on another connection).
   */
  shed(req: Request, res: Response, code: 'proxy_overloaded' | 'client_over_limit', h2: boolean, client: string): void {
    this.abuse.note(code, code === 'proxy_overloaded' ? 'requests shed: the event loop runs late (from connections with others in flight)' : 'requests refused: over limits.maxRequestsPerClient', { client })
    // either way the connection's own doing: its refusals spend its budget (h2-guard.ts), and
    // one that keeps opening streams to be refused is closed
    if (h2) spendOnRefusal((req as Http2Request).session)
    if (h2 && code === 'proxy_overloaded') return void (res as http2.ServerHttp2Stream).close(http2.constants.NGHTTP2_REFUSED_STREAM)
    const reply = localReply(new SidecarError(code), { requestId: requestIdFrom(req.headers['x-request-id']), grpc: isGrpc(req.headers['content-type']) })
    writeResponse(res, reply, { h2, close: ERRORS[code].close, trailers: false })
  }

  /** A request refused before the pipeline (validate.ts): the catalogue answer, then close. */
  refuse(req: Request, res: Response, refusal: Refusal, h2: boolean): void {
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
  parserError(err: NodeJS.ErrnoException, socket: Socket): void {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy()
    // OpenSSL's, not the parser's: a TLS record the connection cannot take after its handshake
    // (a renegotiation refused, a heartbeat, a bad record); nothing HTTP can answer on it
    if (err.code?.startsWith('ERR_SSL_')) {
      this.logger.debug({ code: err.code, client: clientAddressOf(socket) }, 'TLS error after the handshake: connection closed')
      return void socket.destroy()
    }
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
    this.raw(socket, refusal, newRequestId(), 'request refused by the parser')
  }

  /** A catalogue answer written on a raw HTTP/1 socket, which then closes. */
  raw(socket: Socket, refusal: Refusal, requestId: string, msg = 'request refused'): void {
    this.record(refusal, socket, requestId, msg)
    writeRaw(socket, localReply(new SidecarError(refusal.code, { detail: refusal.detail }), { requestId, grpc: false }))
  }

  /** Logs a refusal (an info line, as an access line would be: a flood of them is no flood of
   *  warnings) and reports it: counted, and warned of at most once per 10 s per code. */
  private record(refusal: Refusal, socket: Socket, requestId: string, msg = 'request refused'): void {
    const fields = { error: refusal.code, reason: refusal.detail, client: clientAddressOf(socket), requestId }
    this.logger.info(fields, msg)
    this.abuse.note(refusal.code, 'requests refused', fields)
  }
}

/** OpenSSL's and Node's error codes for a failed handshake, by what an operator would fix. */
const HANDSHAKE_FAILURES: Array<[RegExp, HandshakeFailure]> = [
  [/^ERR_SSL_(HTTPS?_(PROXY_)?REQUEST|WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|RECORD_LENGTH_MISMATCH|UNKNOWN_PROTOCOL)$/, 'not_tls'],
  [/^ERR_SSL_(UNSUPPORTED_PROTOCOL|VERSION_TOO_LOW|TLSV1_ALERT_PROTOCOL_VERSION|NO_PROTOCOLS_AVAILABLE)$/, 'protocol_version'],
  [/^ERR_SSL_(NO_SHARED_CIPHER|NO_SHARED_GROUPS|NO_SUITABLE_SIGNATURE_ALGORITHM|NO_CIPHERS_AVAILABLE|SSLV3_ALERT_HANDSHAKE_FAILURE)$/, 'no_shared_cipher'],
  [/^ERR_SSL_(SSLV3|TLSV1)_ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_\w+|UNSUPPORTED_CERTIFICATE)$/, 'client_rejected_certificate'],
  [/^ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE$/, 'client_certificate_required'],
  [/^ERR_TLS_HANDSHAKE_TIMEOUT$/, 'timeout'],
  [/^(ECONNRESET|EPIPE|ERR_SSL_UNEXPECTED_EOF_WHILE_READING)$/, 'closed'],
]

/** Why a handshake failed, from the error's code; a client certificate refused after the
 *  handshake (Node checks it then and hangs up: "socket hang up") shows in `authorizationError`. */
export function handshakeFailure(code: string | undefined, authorizationError: Error | string | undefined): HandshakeFailure {
  if (authorizationError) return 'client_certificate_invalid'
  for (const [pattern, reason] of HANDSHAKE_FAILURES) if (code !== undefined && pattern.test(code)) return reason
  return 'other'
}
