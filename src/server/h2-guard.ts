// HTTP/2 connections against abuse. Node (nghttp2) already refuses streams over the advertised
// SETTINGS_MAX_CONCURRENT_STREAMS with REFUSED_STREAM, and floods of CONTINUATION frames end the
// session. Left to the proxy:
// - rapid reset (CVE-2023-44487): streams opened and reset at once cost the server a request each
//   and the client nothing; and a client past its limit (limits.maxRequestsPerClient) that keeps
//   opening streams only to be refused costs the same. Past limits.maxStreamResetsPer10s such
//   streams on one connection, it gets GOAWAY (ENHANCE_YOUR_CALM) and is closed at once.
//   (nghttp2's own limit answers GOAWAY later, and then leaves the connection open, in
//   CLOSE-WAIT once the client goes.) Streams the proxy refuses while it sheds load are not the
//   client's doing and do not count.
// - every GOAWAY the proxy sends (idle, drain, abuse) is followed by the socket's close within a
//   grace period, whatever the client does.
import http2 from 'node:http2'
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

export function guardSession(session: http2.ServerHttp2Session, o: GuardOptions): void {
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
  // An idle connection is told to go, then closed (a client may never answer the GOAWAY).
  session.setTimeout(o.keepAliveTimeoutMs, () => {
    session.close()
    goaway(http2.constants.NGHTTP2_NO_ERROR)
  })
}
