// Node's server objects for the listener, with its timeouts and size limits:
// - TLS: one server, HTTP/2 and HTTP/1.1 chosen by ALPN (or HTTP/1.1 only with http2: false);
// - plain: a TCP server that looks at each connection's first bytes: the HTTP/2 connection
//   preface (h2c with prior knowledge, what gRPC clients send in the clear) goes to an HTTP/2
//   server, anything else to an HTTP/1.1 server. Neither listens itself; both are fed connections.
import http from 'node:http'
import http2 from 'node:http2'
import https from 'node:https'
import net, { type Socket } from 'node:net'
import { policy, type ListenerTlsOptions, type Served } from './tls.js'
import type { Request, Response } from './translate.js'

export interface ServerLimits {
  headersTimeoutMs: number
  receiveTimeoutMs: number
  keepAliveTimeoutMs: number
  maxHeaderBytes: number
  maxHeaderCount: number
  maxConcurrentStreams: number
  tls: ListenerTlsOptions | false
}

export interface Servers {
  /** What listens on the port. */
  front: net.Server
  /** Where HTTP/1.1 requests arrive ('request', 'upgrade', 'clientError', 'connect'...). */
  http1: http.Server | https.Server | http2.Http2SecureServer
  /** Where HTTP/2 sessions start ('session'): the TLS server itself, or the h2c server. */
  http2: http2.Http2Server | http2.Http2SecureServer | undefined
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')

export function createServers(opts: ServerLimits, onRequest: (req: Request, res: Response) => void): Servers {
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
    // Node's own check answers 400 without our error code; validate.ts checks Host instead.
    requireHostHeader: false,
    // Explicit, so that NODE_OPTIONS=--insecure-http-parser cannot reopen request smuggling.
    insecureHTTPParser: false,
  }
  const h2 = {
    maxSessionMemory: 10, // MiB of buffered frames per connection before new streams are refused (Node's default)
    maxHeaderListPairs: opts.maxHeaderCount + 8, // pseudo-headers count too; the limits layer counts exactly
    settings: { maxConcurrentStreams: opts.maxConcurrentStreams, maxHeaderListSize: opts.maxHeaderBytes, enablePush: false },
  }
  const tls = opts.tls
  if (!tls) {
    const plain = Object.assign(http.createServer(http1, onRequest), http1)
    const h2c = http2.createServer(h2, onRequest)
    // noDelay: as http.createServer and the TLS server have it (Nagle would hold an answer
    // written in two parts for the client's delayed ACK, up to 40 ms)
    const front = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => byPreface(socket, plain, h2c, opts.headersTimeoutMs))
    // the HTTP/1.1 server never listens: start its timeout checks when the port is bound
    front.once('listening', () => plain.emit('listening'))
    front.once('close', () => plain.close())
    return { front, http1: plain, http2: h2c }
  }
  const secure = { ...secureContext(tls, { material: tls.material, clientCa: tls.clientCa }), handshakeTimeout: tls.handshakeTimeoutMs, noDelay: true, ...clientAuth(tls) }
  if (!tls.http2) {
    const server = Object.assign(https.createServer({ ...http1, ...secure }, onRequest), http1)
    return { front: server, http1: server, http2: undefined }
  }
  // HTTP/2 with HTTP/1.1 fallback. The HTTP/1 side of this server reads its limits from the
  // same properties http.Server uses, so they are set on it after creation.
  const server = Object.assign(http2.createSecureServer({ ...secure, ...h2, allowHTTP1: true }, onRequest), http1)
  return { front: server, http1: server, http2: server }
}

/**
 * Hands a plain connection to the HTTP/2 server when its first bytes are the connection preface,
 * else to the HTTP/1.1 server, the bytes read so far put back for it to parse.
 */
function byPreface(socket: Socket, http1: http.Server, h2c: http2.Http2Server, timeoutMs: number): void {
  let seen: Buffer = Buffer.alloc(0)
  // a connection that says nothing is closed, as the HTTP/1.1 server's headersTimeout would;
  // one whose client goes before saying anything is closed at once (the socket is half-open)
  const gone = () => socket.destroy()
  socket.setTimeout(timeoutMs)
  socket.once('timeout', gone)
  socket.once('end', gone)
  const onData = (chunk: Buffer) => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk])
    const n = Math.min(seen.length, PREFACE.length)
    const h2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n))
    if (h2 && seen.length < PREFACE.length) return // a preface still arriving
    // Every listener of the sniffing goes: one left behind would keep this closure, and the
    // connection's first bytes in `seen` (up to 64 KiB), for as long as the connection lives.
    socket.off('data', onData)
    socket.off('end', gone)
    socket.off('timeout', gone)
    socket.setTimeout(0)
    socket.pause()
    socket.unshift(seen)
    if (h2) {
      // Node's HTTP/2 session learns that the client went only from the socket's close; a
      // half-open socket (the HTTP/1.1 server's need) would never close on the client's FIN.
      socket.allowHalfOpen = false
      h2c.emit('connection', socket) // the session reads what was put back itself
    } else {
      http1.emit('connection', socket)
      socket.resume()
    }
  }
  socket.on('data', onData)
}

/** Everything of a secure context, the first and each reload's: without `ca` a reloaded
 *  context would check client certificates against Node's public CAs. */
export function secureContext(tls: ListenerTlsOptions, served: Served) {
  const { material, clientCa } = served
  return {
    ...policy(tls),
    cert: material.cert,
    key: material.key,
    ...(clientCa !== undefined && { ca: clientCa }),
    ALPNProtocols: tls.http2 ? ['h2', 'http/1.1'] : ['http/1.1'],
  }
}

function clientAuth(tls: ListenerTlsOptions) {
  if (tls.clientCa === undefined) return {}
  return { requestCert: true, rejectUnauthorized: tls.requireClientCert }
}
