// After a 101 to an HTTP/1.1 Upgrade (WebSocket and any other protocol), the client's connection
// and the app's are joined both ways, with backpressure (pipe): bytes are passed on as they come,
// never read or changed. An end on one side ends the other's writing half (half-close); an error
// or a full close on one side takes the other down. A tunnel with no bytes either way for the
// idle timeout is closed.
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { RequestOutcome } from '../pipeline/types.js'

/** How a tunnel ended: both sides closed in turn, the idle timeout, or an error on either side. */
export type TunnelEnd = NonNullable<RequestOutcome['tunnel']>

/** Joins `client` (with `head`, what the client sent past its handshake) and `upstream`; `onEnd`
 *  is told once both are closed. */
export function joinTunnel(client: Socket, head: Buffer, upstream: Duplex, o: { idleTimeoutMs: number; onEnd: (end: TunnelEnd) => void }): void {
  let reason: TunnelEnd = 'closed'
  let open = 2
  const closed = () => {
    if (--open === 0) o.onEnd(reason)
  }
  client.once('close', () => {
    upstream.destroy()
    closed()
  })
  upstream.once('close', () => {
    // the app is done: what it sent is flushed to the client, then the connection ends
    client.end()
    client.setTimeout(1000, () => client.destroy())
    closed()
  })
  const fail = () => {
    reason = 'error'
    client.destroy()
    upstream.destroy()
  }
  client.on('error', fail)
  upstream.on('error', fail)
  client.setTimeout(o.idleTimeoutMs, () => {
    reason = 'idle'
    client.destroy()
  })
  if (head.length > 0) upstream.write(head)
  client.pipe(upstream)
  upstream.pipe(client)
}
