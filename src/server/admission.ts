// Who gets in at the front door, decided before any per-request state is built: connections
// within limits.maxConnections (at the limit, the oldest idle one makes room) and, per client
// address, limits.maxConnectionsPerClient; requests
// within limits.maxRequestsPerClient in flight per address (so one address cannot take every
// slot), and none while the proxy sheds load (shedding.ts). Behind a load balancer that does not
// keep client addresses, "a client" is that balancer: raise the per-client limits there.
import type { ErrorCode } from '../errors.js'
import type { LoadShedder } from './shedding.js'

export interface AdmissionLimits {
  maxConnections: number
  maxConnectionsPerClient: number
  maxRequestsPerClient: number
}

export class Admission {
  private connections = 0
  private readonly clients = new Map<string, { connections: number; requests: number }>()

  constructor(
    private readonly limits: AdmissionLimits,
    private readonly shedder: LoadShedder,
  ) {}

  /**
   * A new connection from `address`: null when admitted (then counted until connectionClosed).
   * At limits.maxConnections, `makeRoom` may close an idle connection for it.
   */
  connection(address: string, makeRoom: () => boolean = () => false): ErrorCode | null {
    const client = this.client(address)
    if (client.connections >= this.limits.maxConnectionsPerClient || (this.connections >= this.limits.maxConnections && !makeRoom())) {
      this.forget(address, client)
      return 'too_many_connections'
    }
    this.connections++
    client.connections++
    return null
  }

  connectionClosed(address: string): void {
    const client = this.clients.get(address)
    if (!client) return
    this.connections--
    client.connections--
    this.forget(address, client)
  }

  /** A new request from `address`: null when admitted (then counted until requestDone). */
  request(address: string): 'proxy_overloaded' | 'client_over_limit' | null {
    if (this.shedder.shedding) return 'proxy_overloaded'
    const client = this.client(address)
    if (client.requests >= this.limits.maxRequestsPerClient) return 'client_over_limit'
    client.requests++
    return null
  }

  requestDone(address: string): void {
    const client = this.clients.get(address)
    if (!client) return
    client.requests--
    this.forget(address, client)
  }

  private client(address: string) {
    let client = this.clients.get(address)
    if (!client) this.clients.set(address, (client = { connections: 0, requests: 0 }))
    return client
  }

  /** An address with nothing open is not kept: the table holds only who is connected. */
  private forget(address: string, client: { connections: number; requests: number }): void {
    if (client.connections === 0 && client.requests === 0) this.clients.delete(address)
  }
}
