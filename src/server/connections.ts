// The listener's connections: every socket and HTTP/2 session, the requests in flight on each,
// the tunnels (upgraded connections), and the graceful stop. A drain first asks clients to go (HTTP/1.1 answers say
// `Connection: close`, HTTP/2 sessions get GOAWAY); a close then ends idle connections at once,
// lets what is in flight finish, and cuts whatever outlives the deadline.
// At limits.maxConnections, a newcomer takes the place of the connection that has held one
// longest for the least progress (makeRoom): a handshake pending longest, a client that said
// nothing, one idle longest between requests, one whose every exchange is stalled on it.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Clock } from '../clock.js'
import type { ConnectionProtocol, ConnectionTls, Metrics } from '../metrics.js'
import { Holders, type Place } from '../pipeline/holders.js'
import { MIN_STALL_MS } from '../pipeline/pressure.js'
import type { ClientProgress } from '../pipeline/types.js'

/** How long a stop waits for connections that were accepted but have sent nothing yet. */
const FRESH_GRACE_MS = 1000

/** A request in flight, as the connections see it: its exchange, and how its client keeps up. */
export interface InFlight extends ClientProgress {
  readonly req: unknown
  readonly res: unknown
}

/** An HTTP/1 request in flight. */
export interface Http1InFlight extends InFlight {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  /** Its connection closed before its response was given one: Node never tells such a
   *  response (a pipelined request waiting behind the one answered), the listener is told. */
  connectionLost(): void
}

/** One HTTP/1 connection: requests in flight and the byte counters at the last request's end,
 *  so each request's access line gets its own bytes. */
export interface Http1Conn {
  /** Oldest first: more than one when the client pipelines; the first is being answered. */
  readonly requests: Http1InFlight[]
  read: number
  written: number
  /** The parser refused what followed the requests in flight: they are answered, then it closes. */
  poisoned: boolean
  readonly tcp: Conn
}

/** One client connection, by its TCP socket. */
interface Conn {
  readonly tcp: Socket
  readonly client: string
  /** When it was accepted; then when its handshake was done; then when it last went idle. */
  since: number
  /** The socket HTTP is spoken on (the TLS socket, or the TCP socket itself), once the handshake
   *  (or the plain port's sniffing) is done. */
  top: Socket | undefined
  /** It has carried a request: idle, it is between requests, not a client that says nothing. */
  used: boolean
  /** Its place among the connections at rest, while it rests. */
  resting: Place<Conn> | null
  /** What it speaks, once `top` is known (sidecar_connections_opened_total's labels). */
  protocol: ConnectionProtocol | undefined
  tls: ConnectionTls
}

interface Session {
  readonly tcp: Conn
  /** Requests in flight (an array: a Set gaining and losing one per request costs the young
   *  collections dearly, pipeline/holders.ts). */
  readonly requests: InFlight[]
}

/** A connection the listener did not accept itself (a test's): nothing to count or evict. */
function untracked(socket: Socket, protocol: ConnectionProtocol): Conn {
  return { tcp: socket, client: '', since: 0, top: socket, used: false, resting: null, protocol, tls: 'none' }
}

/** Why a connection was closed to make room (sidecar_evictions_total's reason). */
export type EvictionReason = 'handshake' | 'silent' | 'idle' | 'stalled'

export class Connections {
  /** Every TCP connection, for the final cut and to make room. */
  private readonly sockets = new Map<Socket, Conn>()
  /** The connections with no request in flight (in their handshake, silent, idle), the one
   *  resting longest first: each goes to the back when it comes to rest again. */
  private readonly resting = new Holders<Conn>()
  /** HTTP/2 sessions, closed with GOAWAY on drain and stop, with their requests in flight. */
  private readonly sessions = new Map<http2.ServerHttp2Session, Session>()
  /** The session spoken on each HTTP/2 connection's socket. */
  private readonly sessionOn = new Map<Socket, Session>()
  /** HTTP/1 connections accepted that have not sent a request yet. */
  private readonly fresh = new Set<Socket>()
  private readonly http1 = new Map<Socket, Http1Conn>()
  /** Connections upgraded to a tunnel: in flight until they close; cut only at the deadline. */
  private readonly tunnels = new Set<Socket>()
  private inFlightNow = 0
  /** Bytes of the connections closed so far, each way (their wire bytes, read at close). */
  private closedRead = 0
  private closedWritten = 0
  private drainingNow = false
  private closingNow = false
  /** Told when a request ends or a fresh connection sends its first request or closes. */
  private changed: (() => void) | null = null
  // A socket's 'close' listeners, one function each for every socket (`this` is the socket), not
  // a closure per connection: with `once`, each costs its closure, context and wrapper, some
  // 0.2 KB a connection for as long as it lives.
  private readonly tcpClosed: (this: Socket) => void
  private readonly http1Closed: (this: Socket) => void

  /** `connectionClosed`: told a TCP connection's client when it closes (admission.ts);
   *  `evicted`: told each connection closed to make room, and why. */
  constructor(
    private readonly deps: {
      metrics: Metrics
      clock: Clock
      connectionClosed: (client: string) => void
      evicted: (reason: EvictionReason, client: string) => void
    },
  ) {
    const self = this
    this.tcpClosed = function () {
      const conn = self.sockets.get(this)
      if (conn === undefined) return
      self.sockets.delete(this)
      self.unrest(conn)
      self.closedRead += this.bytesRead
      self.closedWritten += this.bytesWritten
      deps.metrics.connectionClosed()
      if (conn.protocol !== undefined) deps.metrics.protocolClosed(conn.protocol, conn.tls)
      deps.connectionClosed(conn.client)
    }
    this.http1Closed = function () {
      const conn = self.http1.get(this)
      self.http1.delete(this)
      if (self.fresh.delete(this)) self.notify()
      // pipelined requests still queued behind the one answered: their responses never close
      if (conn) for (const request of [...conn.requests]) if (request.res.socket === null) request.connectionLost()
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
    const conn: Conn = { tcp: socket, client, since: this.deps.clock.now(), top: undefined, used: false, resting: null, protocol: undefined, tls: 'none' }
    this.sockets.set(socket, conn)
    conn.resting = this.resting.add(conn)
    socket.on('close', this.tcpClosed)
  }

  /** An HTTP/1 connection ready for its first request (after the TLS handshake, if any). Every
   *  HTTP/1 request's socket came this way first: its state (begin()) goes when it closes. */
  addHttp1(socket: Socket): void {
    this.fresh.add(socket)
    socket.on('close', this.http1Closed)
    const tcp = this.tcpOf(socket)
    if (tcp) {
      this.speaks(tcp, socket, 'http1')
      this.rest(tcp)
    }
  }

  /** `conn` speaks `protocol` on `top` from now on: counted, with its TLS version. */
  private speaks(conn: Conn, top: Socket, protocol: ConnectionProtocol): void {
    conn.top = top
    conn.protocol = protocol
    if (top !== conn.tcp) conn.tls = (top as TLSSocket).getProtocol() === 'TLSv1.3' ? 'TLSv1.3' : 'TLSv1.2'
    this.deps.metrics.protocolOpened(protocol, conn.tls)
  }

  /** Bytes received and sent on client connections since start, as on the wire. */
  wireBytes(): { received: number; sent: number } {
    let received = this.closedRead
    let sent = this.closedWritten
    for (const socket of this.sockets.keys()) {
      received += socket.bytesRead
      sent += socket.bytesWritten
    }
    return { received, sent }
  }

  /** An HTTP/2 session on `socket` (the TLS socket, or the TCP socket on the plain port). */
  addSession(session: http2.ServerHttp2Session, socket: Socket): void {
    const tracked = this.tcpOf(socket)
    const tcp = tracked ?? untracked(socket, 'http2')
    if (tracked) this.speaks(tracked, socket, 'http2')
    this.rest(tcp)
    const state: Session = { tcp, requests: [] }
    this.sessions.set(session, state)
    this.sessionOn.set(socket, state)
    session.once('close', () => {
      this.sessions.delete(session)
      this.sessionOn.delete(socket)
    })
    if (this.closingNow) session.close()
  }

  /**
   * Closes, to make room for a new connection at limits.maxConnections, the one that has held its
   * place longest for the least progress: the one resting longest (a handshake its client has
   * sent nothing of, a client that has sent no request, a connection idle between requests),
   * or, if longer, one whose every exchange has stalled on its client for MIN_STALL_MS at least
   * (pipeline/pressure.ts): a client merely between two reads is not taken for one that stalls.
   * A resting connection is worth least (Envoy's overload manager shortens idle timeouts for
   * the same reason), and the newcomer, the youngest, never goes first. False if none may go:
   * the newcomer is then refused.
   */
  makeRoom(): boolean {
    const now = this.deps.clock.now()
    let victim: Conn | undefined
    let longest = -1
    let reason: EvictionReason = 'idle'
    for (const { holder: conn } of this.resting) {
      // a handshake whose client has sent its part waits on the proxy's CPU, no client's stall
      // (Node's handshakeTimeout ends the ones that stop halfway)
      if (conn.tcp.destroyed || (conn.top === undefined && conn.tcp.bytesRead > 0)) continue
      ;[victim, longest, reason] = [conn, now - conn.since, restingAs(conn)]
      break
    }
    for (const conn of this.busy()) {
      const ms = this.stallOf(conn, now)
      if (ms >= MIN_STALL_MS && ms > longest) [victim, longest, reason] = [conn, ms, 'stalled']
    }
    if (!victim) return false
    this.deps.evicted(reason, victim.client)
    if (reason === 'stalled') for (const request of this.requestsOn(victim)) request.evict('connections')
    victim.tcp.destroy()
    return true
  }

  /** The connections with requests in flight (tunnels aside). */
  private *busy(): Iterable<Conn> {
    for (const session of this.sessions.values()) if (session.requests.length > 0) yield session.tcp
    for (const [socket, http1] of this.http1) if (http1.requests.length > 0 && !this.tunnels.has(socket)) yield http1.tcp
  }

  /** `conn` comes to rest (accepted, its handshake done, its last request ended): to the back. */
  private rest(conn: Conn): void {
    conn.since = this.deps.clock.now()
    this.unrest(conn)
    if (!conn.tcp.destroyed) conn.resting = this.resting.add(conn)
  }

  /** `conn` is busy, or gone. */
  private unrest(conn: Conn): void {
    if (conn.resting === null) return
    this.resting.remove(conn.resting)
    conn.resting = null
  }

  /** Connections open by state (GET /status): in their handshake (or, on the plain port, not
   *  yet past their first bytes), silent (no request yet), idle between requests, busy, tunnels. */
  states(): Record<EvictionReason | 'busy' | 'tunnel', number> {
    const counts = { handshake: 0, silent: 0, idle: 0, busy: 0, stalled: 0, tunnel: 0 }
    const now = this.deps.clock.now()
    for (const { holder: conn } of this.resting) counts[restingAs(conn)]++
    for (const conn of this.busy()) counts[this.stallOf(conn, now) < MIN_STALL_MS ? 'busy' : 'stalled']++
    counts.tunnel = this.tunnels.size
    return counts
  }

  /** How long a busy `conn` has been stalled on its client: the least of its exchanges' stalls
   *  (a multiplexed connection serving anyone is not stalled). */
  private stallOf(conn: Conn, now: number): number {
    const session = this.sessionOn.get(conn.top!)
    if (session) {
      let least = Infinity
      for (const request of session.requests) least = Math.min(least, request.stalledFor(now))
      return least
    }
    // pipelined requests wait behind the first: it is the one that may stall on its client
    return this.http1.get(conn.top!)?.requests[0]?.stalledFor(now) ?? 0
  }

  /** The exchanges in flight on `conn` (to evict them with it). */
  private requestsOn(conn: Conn): Iterable<InFlight> {
    const session = this.sessionOn.get(conn.top!)
    if (session) return [...session.requests]
    return this.http1.get(conn.top!)?.requests.slice(0, 1) ?? []
  }

  /** Requests in flight on the connection of an HTTP/2 `session`, or of HTTP/1 `socket`. */
  inFlightOn(session: http2.Http2Session | undefined, socket: Socket): number {
    if (session !== undefined) return this.sessions.get(session as http2.ServerHttp2Session)?.requests.length ?? 0
    return this.http1.get(socket)?.requests.length ?? 0
  }

  /** The TCP connection under `socket` (a TLS socket's is its parent). */
  private tcpOf(socket: Socket): Conn | undefined {
    return this.sockets.get((socket as { _parent?: Socket | null })._parent ?? socket)
  }

  /** A request begins: on HTTP/1 (`session` undefined) its connection's state comes back. */
  begin(request: InFlight, session: http2.Http2Session | undefined): Http1Conn | undefined {
    this.inFlightNow++
    if (session !== undefined) {
      const state = this.sessions.get(session as http2.ServerHttp2Session)
      if (state) {
        state.requests.push(request)
        state.tcp.used = true
        this.unrest(state.tcp)
      }
      return undefined
    }
    const exchange = request as Http1InFlight
    const socket = exchange.req.socket
    if (this.fresh.delete(socket)) this.notify()
    let conn = this.http1.get(socket)
    if (!conn) {
      const tcp = this.tcpOf(socket) ?? untracked(socket, 'http1')
      conn = { requests: [], read: 0, written: 0, poisoned: false, tcp }
      this.http1.set(socket, conn)
    }
    conn.tcp.used = true
    conn.requests.push(exchange)
    this.unrest(conn.tcp)
    return conn
  }

  /** A request's response is done (or cut): its bytes on an HTTP/1 connection, headers included. */
  end(request: InFlight, socket: Socket | undefined, conn: Http1Conn | undefined, session: http2.Http2Session | undefined): { bytesIn: number; bytesOut: number } | undefined {
    this.inFlightNow--
    if (session !== undefined) {
      const state = this.sessions.get(session as http2.ServerHttp2Session)
      const i = state?.requests.indexOf(request) ?? -1
      if (state && i >= 0) {
        state.requests.splice(i, 1)
        if (state.requests.length === 0) this.rest(state.tcp)
      }
    }
    let bytes: { bytesIn: number; bytesOut: number } | undefined
    if (socket && conn) {
      const requests = conn.requests
      const i = requests.indexOf(request as Http1InFlight)
      if (i >= 0) requests.splice(i, 1)
      if (requests.length === 0 && !this.tunnels.has(socket)) this.rest(conn.tcp)
      bytes = { bytesIn: socket.bytesRead - conn.read, bytesOut: socket.bytesWritten - conn.written }
      conn.read = socket.bytesRead
      conn.written = socket.bytesWritten
      // end, not destroy: the response may still sit in the socket's buffer
      if ((this.closingNow || conn.poisoned) && requests.length === 0) socket.end()
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
    const tcp = this.tcpOf(socket)
    if (tcp) this.unrest(tcp)
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
    for (const [socket, conn] of this.http1) if (conn.requests.length === 0 && !this.tunnels.has(socket)) socket.end()
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

/** What a resting connection is waiting for. */
function restingAs(conn: Conn): EvictionReason {
  return conn.top === undefined ? 'handshake' : conn.used ? 'idle' : 'silent'
}
