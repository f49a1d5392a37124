// Node's server objects for the listener, with its timeouts and size limits. What listens on the
// port hands each connection to the server of its protocol; neither of those listens itself:
// - TLS: a TLS server; by ALPN, HTTP/2 connections go to the HTTP/2 server, the rest (HTTP/1.1,
//   or a client that names no protocol) to the HTTP/1.1 server;
// - plain: a TCP server that looks at each connection's first bytes: the HTTP/2 connection
//   preface (h2c with prior knowledge, what gRPC clients send in the clear) goes to the HTTP/2
//   server, anything else to the HTTP/1.1 server.
// HTTP/2 is served on Node's core stream API ('stream' events, stream.respond): the compat
// request/response objects cost some 20% of a request over TLS (docs/performance.md).
import http from 'node:http'
import http2 from 'node:http2'
import net, { type Socket } from 'node:net'
import tls, { type TLSSocket } from 'node:tls'
import { policy, type ListenerTlsOptions, type Served } from './tls.js'

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
  /** What listens on the port: a TCP server, or a TLS server. */
  front: net.Server | tls.Server
  /** Where HTTP/1.1 requests arrive ('request', 'upgrade', 'clientError', 'connect'...). */
  http1: http.Server
  /** Where HTTP/2 sessions start ('session', 'stream'); none on a TLS port without http2. */
  http2: http2.Http2Server | undefined
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')

export function createServers(opts: ServerLimits): Servers {
  const http1Limits = {
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
  const http1 = Object.assign(http.createServer(http1Limits), http1Limits)
  const tlsOpts = opts.tls
  const h2 =
    tlsOpts && !tlsOpts.http2
      ? undefined
      : http2.createServer({
          maxSessionMemory: 10, // MiB of buffered frames per connection before new streams are refused (Node's default)
          maxHeaderListPairs: opts.maxHeaderCount + 8, // pseudo-headers count too; the limits layer counts exactly
          settings: { maxConcurrentStreams: opts.maxConcurrentStreams, maxHeaderListSize: opts.maxHeaderBytes, enablePush: false },
        })
  let front: net.Server | tls.Server
  if (!tlsOpts) {
    // noDelay: as a TLS server has it (Nagle would hold an answer written in two parts for the
    // client's delayed ACK, up to 40 ms)
    front = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => byPreface(socket, http1, h2!, opts.headersTimeoutMs))
  } else {
    const secure = { ...secureContext(tlsOpts, { material: tlsOpts.material, clientCa: tlsOpts.clientCa }), handshakeTimeout: tlsOpts.handshakeTimeoutMs, noDelay: true, ...clientAuth(tlsOpts) }
    front = tls.createServer(secure, (socket: TLSSocket) => {
      if (h2 !== undefined && socket.alpnProtocol === 'h2') h2.emit('connection', socket)
      else http1.emit('connection', socket)
    })
  }
  // the HTTP/1.1 server never listens: start its timeout checks when the port is bound
  front.once('listening', () => http1.emit('listening'))
  front.once('close', () => http1.close())
  return { front, http1, http2: h2 }
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
