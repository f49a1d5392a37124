// Who gets in at the front door, decided before any per-request state is built: connections
// within limits.maxConnections (at the limit, the connection that has done least for longest
// makes room: connections.ts), and, while the proxy sheds load (shedding.ts), no request from a
// connection that has others in flight already: the heavy multiplexed users make the load, and a
// client asking one thing at a time is still let in.
// Per client, only when configured: limits.maxConnectionsPerClient by peer address (a trusted
// proxy's connections carry many clients and are not counted) and limits.maxRequestsPerClient in
// flight by the client's identity (client-identity.ts). Off by default: behind an ingress or a
// NAT one address is a crowd, and a cap on it would refuse a busy service's own traffic.
import type { ErrorCode } from '../errors.js'
import type { LoadShedder } from './shedding.js'

export interface AdmissionLimits {
  maxConnections: number
  maxConnectionsPerClient?: number | undefined
  maxRequestsPerClient?: number | undefined
}

interface Client {
  connections: number
  requests: number
}

export class Admission {
  private connections = 0
  /** Per client key, while it holds a connection or a request; only with a per-client limit. */
  private readonly clients = new Map<string, Client>()

  constructor(
    private readonly limits: AdmissionLimits,
    private readonly shedder: LoadShedder,
  ) {}

  /** Whether requests are counted per client (requestDone must follow each admitted one). */
  get perClientRequests(): boolean {
    return this.limits.maxRequestsPerClient !== undefined
  }

  /**
   * A new connection from `peer` (`counted` false for a trusted proxy's): null when admitted
   * (then counted until connectionClosed). At limits.maxConnections, `makeRoom` may close a
   * connection for it.
   */
  connection(peer: string, counted: boolean, makeRoom: () => boolean = () => false): ErrorCode | null {
    const cap = counted ? this.limits.maxConnectionsPerClient : undefined
    const client = cap === undefined ? undefined : this.client(peer)
    if ((client !== undefined && client.connections >= cap!) || (this.connections >= this.limits.maxConnections && !makeRoom())) {
      if (client) this.forget(peer, client)
      return 'too_many_connections'
    }
    this.connections++
    if (client) client.connections++
    return null
  }

  /** A connection admitted by `connection` closed. */
  connectionClosed(peer: string): void {
    this.connections--
    const client = this.clients.get(peer)
    if (!client || client.connections === 0) return
    client.connections--
    this.forget(peer, client)
  }

  /** A new request from client `key`, on a connection with `others` requests in flight: null
   *  when admitted (then, with per-client requests counted, until requestDone). */
  request(key: string, others: number): 'proxy_overloaded' | 'client_over_limit' | null {
    if (others > 0 && this.shedder.shedding) return 'proxy_overloaded'
    const cap = this.limits.maxRequestsPerClient
    if (cap === undefined) return null
    const client = this.client(key)
    if (client.requests >= cap) {
      this.forget(key, client)
      return 'client_over_limit'
    }
    client.requests++
    return null
  }

  requestDone(key: string): void {
    const client = this.clients.get(key)
    if (!client) return
    client.requests--
    this.forget(key, client)
  }

  /** The clients holding most requests in flight (then connections), at most `n` (GET /status). */
  busiest(n: number): Array<{ client: string } & Client> {
    return [...this.clients]
      .sort(([, a], [, b]) => b.requests - a.requests || b.connections - a.connections)
      .slice(0, n)
      .map(([client, c]) => ({ client, ...c }))
  }

  private client(key: string): Client {
    let client = this.clients.get(key)
    if (!client) this.clients.set(key, (client = { connections: 0, requests: 0 }))
    return client
  }

  /** A client with nothing open is not kept: the table holds only who is connected. */
  private forget(key: string, client: Client): void {
    if (client.connections === 0 && client.requests === 0) this.clients.delete(key)
  }
}
