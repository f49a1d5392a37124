// HTTP/2 connections against abuse. Node (nghttp2) already refuses streams over the advertised
// SETTINGS_MAX_CONCURRENT_STREAMS with REFUSED_STREAM, and floods of CONTINUATION frames end the
// session. Left to the proxy:
// - rapid reset (CVE-2023-44487): streams opened and reset at once cost the server a request each
//   and the client nothing; and a client that keeps opening streams only to be refused (past
//   its limit, limits.maxRequestsPerClient, or, while the proxy sheds load, with others in
//   flight on the connection) costs the same. Past limits.maxStreamResetsPer10s such streams on
//   one connection, it gets GOAWAY (ENHANCE_YOUR_CALM) and is closed at once. (nghttp2's own
//   limit answers GOAWAY later, and then leaves the connection open, in CLOSE-WAIT once the
//   client goes.)
// - every GOAWAY the proxy or nghttp2 sends (idle, drain, abuse, a protocol error) is followed
//   by the socket's close within a grace period, whatever the client does (endWithSocket); a
//   session nghttp2 ended without telling Node is found by a PING it does not answer
//   (watchQuiet).
// - a client that breaks the protocol is told why: nghttp2's GOAWAY gets out before Node's
//   destroy (endWithSocket).
import http2 from 'node:http2'
import type { Socket } from 'node:net'
import type { Clock } from '../clock.js'

const WINDOW_MS = 10_000
/** How long a session told GOAWAY may finish its streams before its socket is closed. */
export const GOAWAY_GRACE_MS = 1000
/** How long a session closed for abuse has for its GOAWAY to be written. */
const ABUSE_GRACE_MS = 20

export interface GuardOptions {
  maxStreamResetsPer10s: number
  keepAliveTimeoutMs: number
  clock: Clock
  /** Told once when the session is closed for resetting too many streams. */
  onAbuse: (resets: number) => void
}

/** Each guarded session's budget, spent by streams reset by the client and by refusals. */
const budgets = new WeakMap<http2.Http2Session, () => void>()

/** A stream of `session` refused for its client's doing (over its limit): spends its budget. */
export function spendOnRefusal(session: http2.Http2Session): void {
  budgets.get(session)?.()
}

/** `socket`: the session's own (session.socket is a proxy that refuses to destroy it). */
export function guardSession(session: http2.ServerHttp2Session, socket: Socket, o: GuardOptions): void {
  endWithSocket(session, socket, o.clock)
  let windowStart = o.clock.now()
  let resets = 0
  let closing = false
  // After a GOAWAY, the socket is closed: for an idle connection once its streams have had the
  // grace to finish, for abuse as soon as the GOAWAY is written (nothing of it is worth finishing;
  // destroying the session at once would discard the GOAWAY, and the client would not learn why).
  const goaway = (code: number) => {
    if (closing) return
    closing = true
    if (!session.destroyed && !session.closed) session.goaway(code)
    const stop = o.clock.timeout(code === http2.constants.NGHTTP2_NO_ERROR ? GOAWAY_GRACE_MS : ABUSE_GRACE_MS, () => session.destroy())
    session.once('close', stop)
  }
  const spend = () => {
    if (closing) return
    const now = o.clock.now()
    if (now - windowStart >= WINDOW_MS) [windowStart, resets] = [now, 0]
    if (++resets > o.maxStreamResetsPer10s) {
      o.onAbuse(resets)
      goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
    }
  }
  budgets.set(session, spend)
  session.on('stream', (stream: http2.ServerHttp2Stream) => {
    stream.once('close', () => {
      // a connection that ends cancels its open streams: that is no reset by the client
      if (session.destroyed) return
      const code = stream.rstCode
      if (code !== http2.constants.NGHTTP2_NO_ERROR && code !== http2.constants.NGHTTP2_REFUSED_STREAM) spend()
    })
  })
  watchQuiet(session, o, () => {
    // idle: told to go, then closed (a client may never answer the GOAWAY)
    session.close()
    goaway(http2.constants.NGHTTP2_NO_ERROR)
  })
}

/** How long a session may be quiet (no frame either way) before it is asked whether it lives. */
export const PROBE_MS = 1000

/**
 * A quiet session is asked, with a PING, whether it still lives: nghttp2 ends a session on its
 * own for some protocol errors (a CONTINUATION frame with no HEADERS before it), writes its
 * GOAWAY and stops reading, and Node is told nothing: the session would sit there, its client
 * gone and its socket in CLOSE-WAIT, until the keep-alive timeout. A PING not answered within
 * PROBE_MS means it is dead, and it is destroyed. The asking backs off (1, 2, 4... s of quiet),
 * so an idle connection costs a handful of PINGs; any new stream starts the count again, and
 * once quiet for keepAliveTimeoutMs in all, the session is idle (`idle`).
 */
function watchQuiet(session: http2.ServerHttp2Session, o: GuardOptions, idle: () => void): void {
  let wait = Math.min(PROBE_MS, o.keepAliveTimeoutMs)
  let quiet = 0
  const onQuiet = () => {
    quiet += wait
    if (quiet >= o.keepAliveTimeoutMs) return idle()
    if (session.destroyed || session.closed) return
    let answered = false
    if (!session.ping(() => (answered = true))) return // PINGs outstanding already: asked
    o.clock.timeout(PROBE_MS, () => {
      if (!answered && !session.destroyed) session.destroy()
    })
    wait = Math.min(wait * 2, o.keepAliveTimeoutMs - quiet)
    session.setTimeout(wait)
  }
  session.on('stream', () => {
    if (quiet === 0) return
    quiet = 0
    wait = Math.min(PROBE_MS, o.keepAliveTimeoutMs)
    session.setTimeout(wait)
  })
  session.on('timeout', onQuiet)
  session.setTimeout(wait)
}

/**
 * Every end of the session, whoever decides it (the guard, Node itself), goes through its
 * destroy: the socket is destroyed a grace period later if it has not closed by then. Node's own
 * close ends the socket and waits for its last write and the client's FIN, which a client that
 * reads nothing or never closes does not give: such sockets stayed open, half-closed or in
 * CLOSE-WAIT.
 *
 * Node destroys the session from inside nghttp2's read when the client breaks the protocol (a
 * stream past the limit it acknowledged, which nghttp2 takes as a connection error: RFC 9113
 * 5.1.2's PROTOCOL_ERROR, where REFUSED_STREAM for that stream alone would have served the rest),
 * before nghttp2's GOAWAY (its error, the last stream it processed) is written. That destroy
 * waits one turn of the loop: by then it is.
 */
function endWithSocket(session: http2.ServerHttp2Session, socket: Socket, clock: Clock): void {
  const destroy = session.destroy
  let ending = false
  let deferred = false
  session.destroy = function (this: http2.ServerHttp2Session, error?: Error | number, code?: number) {
    if (!ending) {
      ending = true
      const stop = clock.timeout(GOAWAY_GRACE_MS, () => socket.destroy())
      socket.once('close', stop)
    }
    if (!deferred && error instanceof Error && (error as NodeJS.ErrnoException).code === 'ERR_HTTP2_ERROR') {
      deferred = true
      setImmediate(() => destroy.call(this, error, code))
      return this
    }
    return destroy.call(this, error as Error, code)
  } as typeof session.destroy
}
