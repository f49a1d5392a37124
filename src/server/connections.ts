// The listener's connections: every socket and HTTP/2 session, the requests in flight on each,
// the tunnels (upgraded connections), and the graceful stop. A drain first asks clients to go (HTTP/1.1 answers say
// `Connection: close`, HTTP/2 sessions get GOAWAY); a close then ends idle connections at once,
// lets what is in flight finish, and cuts whatever outlives the deadline.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { Clock } from '../clock.js'
import type { Metrics } from '../metrics.js'

/** How long a stop waits for connections that were accepted but have sent nothing yet. */
const FRESH_GRACE_MS = 1000

/** One HTTP/1 connection: requests in flight (pipelining) and the byte counters at the last
 *  request's end, so each request's access line gets its own bytes. */
export interface Http1Conn {
  busy: number
  read: number
  written: number
  /** The latest request still in flight, and its response. */
  latest: { req: IncomingMessage; res: ServerResponse } | undefined
  /** The parser refused what followed the requests in flight: they are answered, then it closes. */
  poisoned: boolean
}

export class Connections {
  /** Every TCP connection, for the final cut, with its client's address. */
  private readonly sockets = new Map<Socket, string>()
  /** HTTP/2 sessions, closed with GOAWAY on drain and stop, with their streams open. */
  private readonly sessions = new Map<http2.ServerHttp2Session, { open: number }>()
  /** HTTP/1 connections accepted that have not sent a request yet. */
  private readonly fresh = new Set<Socket>()
  private readonly http1 = new Map<Socket, Http1Conn>()
  /** Connections upgraded to a tunnel: in flight until they close; cut only at the deadline. */
  private readonly tunnels = new Set<Socket>()
  private inFlightNow = 0
  private drainingNow = false
  private closingNow = false
  /** Told when a request ends or a fresh connection sends its first request or closes. */
  private changed: (() => void) | null = null
  // A socket's 'close' listeners, one function each for every socket (`this` is the socket), not
  // a closure per connection: with `once`, each costs its closure, context and wrapper, some
  // 0.2 KB a connection for as long as it lives.
  private readonly tcpClosed: (this: Socket) => void
  private readonly http1Closed: (this: Socket) => void

  /** `connectionClosed`: told a TCP connection's client when it closes (admission.ts). */
  constructor(private readonly deps: { metrics: Metrics; clock: Clock; connectionClosed: (client: string) => void }) {
    const self = this
    this.tcpClosed = function () {
      const client = self.sockets.get(this)
      if (client === undefined) return
      self.sockets.delete(this)
      deps.metrics.connectionClosed()
      deps.connectionClosed(client)
    }
    this.http1Closed = function () {
      self.http1.delete(this)
      if (self.fresh.delete(this)) self.notify()
    }
  }

  /** Client connections open (TCP). */
  get count(): number {
    return this.sockets.size
  }

  get inFlight(): number {
    return this.inFlightNow
  }

  /** Draining or closing: HTTP/1.1 answers say `Connection: close`. */
  get draining(): boolean {
    return this.drainingNow || this.closingNow
  }

  /** A TCP connection accepted from `client`. */
  add(socket: Socket, client: string): void {
    this.deps.metrics.connectionOpened()
    this.sockets.set(socket, client)
    socket.on('close', this.tcpClosed)
  }

  /** An HTTP/1 connection ready for its first request (after the TLS handshake, if any). Every
   *  HTTP/1 request's socket came this way first: its state (begin()) goes when it closes. */
  addHttp1(socket: Socket): void {
    this.fresh.add(socket)
    socket.on('close', this.http1Closed)
  }

  addSession(session: http2.ServerHttp2Session): void {
    const streams = { open: 0 }
    this.sessions.set(session, streams)
    session.on('stream', (stream: http2.ServerHttp2Stream) => {
      streams.open++
      stream.once('close', () => streams.open--)
    })
    session.once('close', () => this.sessions.delete(session))
    if (this.closingNow) session.close()
  }

  /**
   * Closes the oldest idle connection (accepted but silent, an HTTP/1 keep-alive connection
   * between requests, an HTTP/2 session with no stream open) to make room for a new one at
   * limits.maxConnections: an idle connection is worth less than one about to send a request
   * (Envoy's overload manager shortens idle timeouts for the same reason). False if none is idle.
   */
  evictIdle(): boolean {
    for (const socket of this.fresh) {
      if (socket.destroyed) continue
      socket.destroy()
      return true
    }
    for (const [socket, conn] of this.http1) {
      if (conn.busy > 0 || socket.destroyed || this.tunnels.has(socket)) continue
      socket.destroy()
      return true
    }
    for (const [session, streams] of this.sessions) {
      if (streams.open > 0 || session.destroyed) continue
      session.destroy()
      return true
    }
    return false
  }

  /** A request begins; on HTTP/1 (`exchange` given) its connection's state comes back. */
  begin(exchange: { req: IncomingMessage; res: ServerResponse } | undefined): Http1Conn | undefined {
    this.inFlightNow++
    if (exchange === undefined) return undefined
    const socket = exchange.req.socket
    if (this.fresh.delete(socket)) this.notify()
    let conn = this.http1.get(socket)
    if (!conn) {
      conn = { busy: 0, read: 0, written: 0, latest: undefined, poisoned: false }
      this.http1.set(socket, conn)
    }
    conn.busy++
    conn.latest = exchange
    return conn
  }

  /** A request's response is done (or cut): its bytes on an HTTP/1 connection, headers included. */
  end(socket: Socket | undefined, conn: Http1Conn | undefined): { bytesIn: number; bytesOut: number } | undefined {
    this.inFlightNow--
    let bytes: { bytesIn: number; bytesOut: number } | undefined
    if (socket && conn) {
      conn.busy--
      if (conn.busy === 0) conn.latest = undefined
      bytes = { bytesIn: socket.bytesRead - conn.read, bytesOut: socket.bytesWritten - conn.written }
      conn.read = socket.bytesRead
      conn.written = socket.bytesWritten
      // end, not destroy: the response may still sit in the socket's buffer
      if ((this.closingNow || conn.poisoned) && conn.busy === 0) socket.end()
    }
    this.notify()
    return bytes
  }

  get tunnelCount(): number {
    return this.tunnels.size
  }

  /** A connection turned into a tunnel (its upgrade answered 101): in flight until it closes. */
  beginTunnel(socket: Socket): void {
    this.inFlightNow++
    this.tunnels.add(socket)
    this.deps.metrics.tunnelOpened()
    if (this.fresh.delete(socket)) this.notify()
  }

  endTunnel(socket: Socket): void {
    this.inFlightNow--
    this.tunnels.delete(socket)
    this.deps.metrics.tunnelClosed()
    this.notify()
  }

  /** An HTTP/1 connection's state, while it has had a request. */
  http1Of(socket: Socket): Http1Conn | undefined {
    return this.http1.get(socket)
  }

  /** Whether the response on this connection (HTTP/1) must tell the client it closes. */
  mustClose(socket: Socket | undefined): boolean {
    return this.draining || (socket !== undefined && this.http1.get(socket)?.poisoned === true)
  }

  /**
   * First step of a drain: keep accepting and serving, but ask clients to go elsewhere.
   * HTTP/1.1 responses say `Connection: close`; HTTP/2 sessions get GOAWAY (their open streams
   * finish, new streams go to a new connection, which is still accepted).
   */
  drain(): void {
    this.drainingNow = true
    for (const session of this.sessions.keys()) session.close()
  }

  /**
   * Graceful stop, once the listening socket is closed (`stopped` resolves when the server has
   * closed): idle HTTP/1 connections end at once and busy ones after their response; HTTP/2
   * sessions get GOAWAY and finish their open streams. Whatever still runs after `timeoutMs` is
   * cut. Resolves with the number of requests cut.
   */
  async close(timeoutMs: number, stopped: Promise<void>): Promise<number> {
    const { clock } = this.deps
    this.closingNow = true
    for (const session of this.sessions.keys()) session.close()
    for (const [socket, conn] of this.http1) if (conn.busy === 0 && !this.tunnels.has(socket)) socket.end()
    const deadline = clock.now() + timeoutMs
    // A connection accepted just before the listener closed may not have sent its request yet:
    // give such connections up to FRESH_GRACE_MS to do so, then finish what is in flight.
    const freshUntil = Math.min(deadline, clock.now() + FRESH_GRACE_MS)
    for (;;) {
      const now = clock.now()
      if (this.inFlightNow > 0 && now < deadline) await this.nextChange(deadline - now)
      else if (this.fresh.size > 0 && now < freshUntil) await this.nextChange(freshUntil - now)
      else break
    }
    const cut = this.inFlightNow
    if (cut === 0) {
      // Nothing is running: let the last responses leave the socket buffers (a destroy could
      // reset a connection whose final bytes are still queued), then cut what lingers.
      for (const socket of this.sockets.keys()) socket.end()
      let cancel = () => {}
      await Promise.race([stopped, new Promise<void>((resolve) => (cancel = clock.timeout(Math.max(0, Math.min(1000, deadline - clock.now())), resolve)))])
      cancel()
    }
    for (const session of this.sessions.keys()) session.destroy()
    for (const socket of this.sockets.keys()) socket.destroy()
    await stopped
    return cut
  }

  /** Resolves at the next change of what a stop waits for, or after `ms`. */
  private nextChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = this.deps.clock.timeout(ms, () => done())
      const done = () => {
        cancel()
        this.changed = null
        resolve()
      }
      this.changed = done
    })
  }

  private notify(): void {
    this.changed?.()
  }
}
