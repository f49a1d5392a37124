// Who a request is from, for the policies kept per client (limits.maxRequestsPerClient, rate
// limits keyed by client). At a pod's front door many clients share one address (an ingress, a
// NAT, a node's SNAT), so the source address alone names a crowd; and a header names whatever
// its sender wants. An identity is taken only where it can be trusted:
// - a client certificate the handshake verified: its first URI SAN (a SPIFFE ID), else its
//   subject: `cert:spiffe://cluster.local/ns/shop/sa/frontend`;
// - from a peer in listener.trustedProxies (an ingress, a load balancer: CIDRs), the client that
//   proxy names: with `x-forwarded-for` (the default) or `forwarded`, the last address in the
//   chain that is not itself a trusted proxy (nginx's real_ip_recursive, Envoy's trusted hops):
//   `forwarded:203.0.113.9`; with any other header name, that header's whole value, as the
//   proxy sets it (`x-real-ip`, an API gateway's client id): `header:<value>`;
// - else the peer's own address, bare: `10.1.2.3`.
// A spoofed X-Forwarded-For from a peer outside the list names nobody: the peer's address does.
import net from 'node:net'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'

export interface ClientIdentityOptions {
  /** CIDRs (or single addresses) of the proxies whose forwarding headers are believed. */
  trustedProxies: readonly string[]
  /** `x-forwarded-for`, `forwarded`, or the name of a header whose value names the client. */
  clientHeader: string
  /** The listener verifies client certificates (listener.tls.clientCaFile). */
  verifiesClients: boolean
}

/** Longest identity value kept (a header's or a certificate's): keys are held in tables. */
const MAX_KEY = 256

export class ClientIdentity {
  private readonly proxies: net.BlockList | undefined
  /** Each connection's verified certificate identity (or null: none), read once. */
  private readonly certs = new WeakMap<object, string | null>()

  constructor(private readonly opts: ClientIdentityOptions) {
    this.proxies = opts.trustedProxies.length === 0 ? undefined : blockList(opts.trustedProxies)
  }

  /** Whether a request's identity can be anything but its peer's address (else keyOf is the
   *  address, and the listener need not ask). */
  get keyed(): boolean {
    return this.proxies !== undefined || this.opts.verifiesClients
  }

  /** How keys are chosen, in words (GET /status). */
  get keyedBy(): string[] {
    const how: string[] = []
    if (this.opts.verifiesClients) how.push('the verified client certificate (URI SAN, else subject)')
    if (this.proxies) how.push(`${this.opts.clientHeader} from ${this.opts.trustedProxies.join(', ')}`)
    how.push('the peer address')
    return how
  }

  /** Whether `address` (a peer's) is a trusted proxy. */
  trusts(address: string): boolean {
    return this.proxies !== undefined && this.proxies.check(address, net.isIPv6(address) ? 'ipv6' : 'ipv4')
  }

  /**
   * The key of a request from `peer` with `headers`; `socket` is its TLS socket and `connection`
   * what stands for its connection (the socket, or the HTTP/2 session), whose certificate is
   * read once.
   */
  keyOf(peer: string, socket: Socket, connection: object, headers: Readonly<Record<string, string | string[] | undefined>>): string {
    if (this.opts.verifiesClients) {
      const cert = this.certificateOf(socket, connection)
      if (cert !== null) return cert
    }
    if (!this.trusts(peer)) return peer
    const header = this.opts.clientHeader
    const value = headers[header]
    if (value === undefined) return peer
    const text = Array.isArray(value) ? value.join(',') : value
    if (header === 'x-forwarded-for' || header === 'forwarded') {
      const client = this.lastUntrusted(header === 'forwarded' ? forwardedFor(text) : text.split(','))
      return client === undefined ? peer : `forwarded:${client}`
    }
    const named = text.trim()
    return named === '' ? peer : `header:${named.slice(0, MAX_KEY)}`
  }

  /** The chain's client: from the right, the first hop that is not a trusted proxy. A hop that
   *  is no address ends the walk with nobody: the chain cannot be believed past it. */
  private lastUntrusted(hops: string[]): string | undefined {
    let client: string | undefined
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = bareAddress(hops[i]!)
      if (hop === undefined) return undefined
      client = hop
      if (!this.trusts(hop)) return hop
    }
    return client // every hop a trusted proxy: the first of them
  }

  private certificateOf(socket: Socket, connection: object): string | null {
    let cert = this.certs.get(connection)
    if (cert === undefined) {
      cert = verifiedIdentity(socket as TLSSocket)
      this.certs.set(connection, cert)
    }
    return cert
  }
}

/** `cert:<first URI SAN>` (a SPIFFE ID), else `cert:<subject>`, of a certificate the handshake
 *  verified; null without one. */
function verifiedIdentity(socket: TLSSocket): string | null {
  if (socket.authorized !== true) return null
  const cert = socket.getPeerX509Certificate()
  if (cert === undefined) return null
  const uri = cert.subjectAltName
    ?.split(', ')
    .find((name) => name.startsWith('URI:'))
    ?.slice(4)
  return `cert:${(uri ?? cert.subject.split('\n').join(',')).slice(0, MAX_KEY)}`
}

/** RFC 7239: the `for=` of each element, in order (`for="[2001:db8::1]:4711"` included). */
function forwardedFor(value: string): string[] {
  const hops: string[] = []
  for (const element of value.split(',')) {
    for (const pair of element.split(';')) {
      const eq = pair.indexOf('=')
      if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== 'for') continue
      hops.push(pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1'))
    }
  }
  return hops
}

/** An address without brackets or port (`[::1]:80`, `10.0.0.1:80`), or undefined if it is none
 *  (`unknown`, an obfuscated `_node`, garbage). */
function bareAddress(hop: string): string | undefined {
  let text = hop.trim()
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(text)
  if (bracketed) text = bracketed[1]!
  else if (/^[\d.]+:\d+$/.test(text)) text = text.slice(0, text.lastIndexOf(':'))
  if (text.startsWith('::ffff:') && net.isIPv4(text.slice(7))) text = text.slice(7)
  return net.isIP(text) === 0 ? undefined : text
}

/** A BlockList of CIDRs and single addresses (validated by the config schema: config/settings.ts cidrProblem). */
function blockList(cidrs: readonly string[]): net.BlockList {
  const list = new net.BlockList()
  for (const cidr of cidrs) {
    const [address, bits] = cidr.split('/') as [string, string | undefined]
    const type = net.isIPv6(address) ? 'ipv6' : 'ipv4'
    if (bits === undefined) list.addAddress(address, type)
    else list.addSubnet(address, Number(bits), type)
  }
  return list
}
