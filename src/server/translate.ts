// Between Node's request/response objects (HTTP/1's, and HTTP/2's core stream API) and the
// pipeline's ProxyRequest/ProxyResponse: the request the app will get, and the response written
// back with its body streamed.
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http'
import http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { FAULT_ABORT_HEADER, FAULT_DELAY_HEADER, endToEnd, upstreamRequestHeaders, type ForwardingInfo } from '../headers.js'
import type { Clock } from '../clock.js'
import { release } from '../pipeline/compose.js'
import type { ProxyRequest, ProxyResponse } from '../pipeline/types.js'
import { countRegularHeaders } from './validate.js'

/**
 * An HTTP/2 request, read off its stream: what of a request the listener needs, in the shape of
 * HTTP/1's IncomingMessage. (Node's compat objects would make a Readable and a response object
 * per stream, and always send trailers.)
 */
export class Http2Request {
  readonly httpVersion = '2.0'
  constructor(
    readonly stream: http2.ServerHttp2Stream,
    readonly headers: http2.IncomingHttpHeaders,
    readonly rawHeaders: string[],
    /** The connection's own socket (the session's `socket` is a proxy of it). */
    readonly socket: Socket,
    readonly session: http2.ServerHttp2Session,
  ) {}

  get method(): string {
    return this.headers[':method'] ?? ''
  }

  get url(): string {
    return this.headers[':path'] ?? ''
  }
}

export type Request = IncomingMessage | Http2Request
/** HTTP/1's response, or the HTTP/2 request's stream. */
export type Response = ServerResponse | http2.ServerHttp2Stream

/** The pipeline's request: `target` replaces the URL when the listener rewrote it (absolute-form). */
export function toProxyRequest(req: Request, h2: boolean, target: string | null, requestId: string, forwarding: ForwardingInfo): ProxyRequest {
  const cl = req.headers['content-length']
  const te = req.headers['transfer-encoding']
  const hasBody = h2 ? !(req as Http2Request).stream.endAfterHeaders : te !== undefined || (cl !== undefined && cl !== '0')
  // dropped from the app's headers (headers.ts), kept here for the fault layer
  const faultDelay = req.headers[FAULT_DELAY_HEADER]
  const faultAbort = req.headers[FAULT_ABORT_HEADER]
  return {
    method: req.method ?? 'GET',
    path: target ?? req.url ?? '/',
    headers: upstreamRequestHeaders(req.headers, requestId, forwarding),
    body: hasBody ? (h2 ? (req as Http2Request).stream : (req as IncomingMessage)) : null,
    contentLength: cl !== undefined && te === undefined ? Number(cl) : null,
    headerCount: h2 ? countRegularHeaders(req.rawHeaders) : req.rawHeaders.length / 2,
    transferEncoding: te ?? null,
    faultAsked: faultDelay === undefined && faultAbort === undefined ? undefined : { delayMs: single(faultDelay), abort: single(faultAbort) },
  }
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

export interface WriteOptions {
  h2: boolean
  /** HTTP/1.1: tell the client the connection ends after this answer (HTTP/2 has no Connection
   *  header; its sessions get GOAWAY instead). */
  close: boolean
  /** The client takes trailers (HTTP/2, or HTTP/1.1 with TE: trailers). */
  trailers: boolean
  /** A client that reads nothing of a streamed body for `ms` is cut, and `onCut` told; `stall`
   *  is told when it stops taking the body (and what the body and its connection hold then) and
   *  when it takes it again, or its response closes. */
  sendIdle?: { ms: number; clock: Clock; onCut: () => void; stall: Stall }
}

/** Writes the response and streams its body. */
export function writeResponse(res: Response, response: ProxyResponse, o: WriteOptions): void {
  if (o.h2) return writeHttp2(res as http2.ServerHttp2Stream, response, o)
  const http1 = res as ServerResponse
  const body = response.body
  if (http1.destroyed) return release(response) // the client left while the pipeline worked
  if (o.close) response.headers.connection = 'close'
  const sent = o.trailers ? response.trailers : undefined
  http1.writeHead(response.status, response.headers)
  if (body === null || Buffer.isBuffer(body)) {
    if (sent !== undefined) addTrailers(http1, sent)
    if (body === null) http1.end()
    else http1.end(body)
  } else {
    // before pipe's own 'end' listener ends `res`: the trailers go out with the end
    if (sent !== undefined) body.once('end', () => addTrailers(http1, sent))
    streamBody(http1, body, o)
  }
}

/**
 * HTTP/2: the headers with the end of the stream when there is nothing else to send (a gRPC
 * status in the headers is read by gRPC clients only as such a "trailers-only" answer); a whole
 * body with them; a streamed body piped; trailers after the body when the app sent any (for a
 * streamed body they are known only at its end, so the stream waits for them).
 */
function writeHttp2(stream: http2.ServerHttp2Stream, response: ProxyResponse, o: WriteOptions): void {
  if (stream.destroyed) return release(response)
  const headers: OutgoingHttpHeaders = response.headers
  headers[':status'] = response.status
  // (a HEAD, 204 or 304 stream Node ends with its headers; their bodies are empty)
  const body = response.body
  const trailers = o.trailers ? response.trailers : undefined
  if (body === null || Buffer.isBuffer(body)) {
    const end = trailers === undefined ? undefined : endToEnd(trailers)
    const withTrailers = end !== undefined && Object.keys(end).length > 0
    const empty = body === null || body.length === 0
    stream.respond(headers, { endStream: empty && !withTrailers, waitForTrailers: withTrailers })
    if (withTrailers) stream.once('wantTrailers', () => stream.sendTrailers(end))
    if (!empty) stream.end(body)
    else if (withTrailers) stream.end()
    return
  }
  stream.respond(headers, { waitForTrailers: trailers !== undefined })
  if (trailers !== undefined) stream.once('wantTrailers', () => stream.sendTrailers(endToEnd(trailers)))
  streamBody(stream, body, o)
}

/**
 * Not stream.pipeline: it makes and aborts an AbortController per call, a measurable share of
 * the per-request cost. An upstream failure mid-body destroys `res` and with it the connection
 * (HTTP/1) or the stream (HTTP/2, RST_STREAM), so the client sees a truncated response, never a
 * short "complete" one. A client gone mid-body releases the upstream body.
 */
function streamBody(res: Response, body: Readable, o: WriteOptions): void {
  body.once('error', (err) => res.destroy(err))
  res.once('close', () => {
    if (!body.readableEnded) body.on('error', noop).destroy()
  })
  if (o.sendIdle) cutWhenStalled(res, body, o.sendIdle)
  body.pipe(res as NodeJS.WritableStream)
}

/**
 * pipe() pauses the body while the client's connection does not take more (its buffers are
 * full: the client reads nothing); if that lasts `ms`, the client is cut (nginx's send_timeout).
 */
/** Told when a client stops taking its answer's streamed body, and when it takes it again. */
export interface Stall {
  stopped(at: number, held: number): void
  goesOn(): void
}

function cutWhenStalled(res: Response, body: Readable, o: NonNullable<WriteOptions['sendIdle']>): void {
  // Registered before pipe() registers its own: when the client goes, pipe's unpiping pauses
  // the body, and that pause must not be taken for a stall.
  let closed = false
  let stop = noop
  res.once('close', () => {
    closed = true
    o.stall.goesOn()
    stop()
  })
  body.on('pause', () => {
    if (closed) return
    o.stall.stopped(o.clock.now(), body.readableLength + res.writableLength)
    stop = o.clock.timeout(o.ms, () => {
      o.onCut()
      res.destroy()
    })
    body.once('resume', () => {
      o.stall.goesOn()
      stop()
    })
  })
}

/**
 * A response written on a raw HTTP/1.1 socket (an upgrade request, which Node hands over as a
 * socket): the 101 that opens a tunnel (`upgrade` names the protocol), or any other answer, after
 * which the connection closes (it left Node's HTTP handling at the upgrade). A body without a
 * length is delimited by that close.
 */
export function writeRaw(socket: Socket, response: ProxyResponse, upgrade?: string): void {
  const headers = { ...response.headers }
  if (upgrade !== undefined) Object.assign(headers, { connection: 'Upgrade', upgrade })
  else headers.connection = 'close'
  let head = `HTTP/1.1 ${response.status} ${STATUS_CODES[response.status] ?? ''}\r\n`
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value]) head += `${name}: ${v}\r\n`
  }
  socket.write(`${head}\r\n`)
  const body = response.body
  if (upgrade !== undefined) return
  if (body === null || Buffer.isBuffer(body)) {
    if (body === null) socket.end()
    else socket.end(body)
    return
  }
  body.once('error', () => socket.destroy())
  socket.once('close', () => body.on('error', noop).destroy())
  body.pipe(socket)
}

/** The app's trailers, end-to-end ones only, for an HTTP/1.1 client that takes them (`TE:
 *  trailers`, on a chunked answer). */
function addTrailers(res: ServerResponse, trailers: Readonly<Record<string, string | string[] | undefined>>): void {
  const end = endToEnd(trailers)
  if (Object.keys(end).length > 0) res.addTrailers(end)
}

/** Whether the whole response went out. An HTTP/2 stream is complete when we ended it and it
 *  closed without an error code. */
export function completed(res: Response, h2: boolean): boolean {
  if (!h2) return (res as ServerResponse).writableFinished
  const stream = res as http2.ServerHttp2Stream
  return stream.writableEnded && stream.rstCode === http2.constants.NGHTTP2_NO_ERROR
}

/** The status the client was sent, if its headers went. */
export function sentStatus(res: Response, h2: boolean): number | undefined {
  if (!res.headersSent) return undefined
  return h2 ? Number((res as http2.ServerHttp2Stream).sentHeaders[':status']) : (res as ServerResponse).statusCode
}

/** HTTP/2 multiplexes one connection: a request's bytes are its declared body lengths. */
export function declaredBytes(req: Http2Request, stream: http2.ServerHttp2Stream): { bytesIn: number; bytesOut: number } {
  const te = req.headers['transfer-encoding']
  const cl = req.headers['content-length']
  const sent = stream.headersSent ? stream.sentHeaders['content-length'] : undefined
  return { bytesIn: cl !== undefined && te === undefined ? Number(cl) : 0, bytesOut: Number(sent ?? 0) }
}

/** The client certificate's subject when the handshake verified it, e.g. `CN=billing,O=Acme`. */
export function verifiedSubject(socket: TLSSocket): string | undefined {
  if (!socket.authorized) return undefined
  return socket.getPeerX509Certificate()?.subject.split('\n').join(',')
}

export function clientAddressOf(socket: Socket): string {
  const address = socket.remoteAddress ?? ''
  return address.startsWith('::ffff:') ? address.slice(7) : address
}

function noop(): void {}
