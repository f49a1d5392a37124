// Fair to the crowd: at a pod's front door many clients share one address (an ingress, a NAT, a
// node's SNAT). With the defaults, one address with hundreds of requests in flight is served
// like any other traffic; per-client limits, when configured, count a client only by an
// identity worth trusting (a verified certificate, or what a trusted proxy says), never by a
// header anyone can send.
import http from 'node:http'
import https from 'node:https'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { json, metric, request, until } from '../fixtures/client.js'
import { opensslCa, opensslIssue } from '../fixtures/openssl.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream } from '../fixtures/upstream.js'

/** An app whose /hold requests wait until `release()`. */
function holdingApp() {
  const held: http.ServerResponse[] = []
  let released = false
  const builder = fakeUpstream().route('/hold', (_req, res) => {
    if (released) res.end('done')
    else held.push(res)
  })
  return {
    builder,
    held,
    release() {
      released = true
      for (const res of held.splice(0)) res.end('done')
    },
  }
}

/** A request to `url` from the loopback address `from`, with `headers`; resolves with its status
 *  and its access-line id. */
function from(url: string, address: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; id: string; error: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { localAddress: address, agent: false, headers }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode!, id: String(res.headers['x-request-id']), error: res.headers['x-sidecar-error'] as string | undefined }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('400 requests in flight from one address (a busy ingress): every one served with the default limits', async (t) => {
  const app = holdingApp()
  const { up, proxy } = await proxied(t, app.builder)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 400 })
  t.teardown(() => agent.destroy())
  const replies = Array.from({ length: 400 }, () => request(`${proxy.url}/hold`, { agent }))
  await until(() => app.held.length === 400, 10_000)
  app.release()
  const statuses = (await Promise.all(replies)).map((r) => r.status)
  t.equal(statuses.filter((s) => s === 200).length, 400, 'all 400 answered 200')
  t.equal(up.seen.length, 400)
  t.equal(await metric(proxy.adminUrl, 'sidecar_rejected_requests_total{reason="client_over_limit"}'), 0, 'none refused as over a per-client limit')
  const status = (await json<{ clients: { maxRequestsPerClient: null; maxConnectionsPerClient: null; keyedBy: string[] } }>(`${proxy.adminUrl}/status`)).body
  t.same(status.clients.maxRequestsPerClient, null, '/status: the per-client request limit is off')
  t.same(status.clients.maxConnectionsPerClient, null)
  t.same(status.clients.keyedBy, ['the peer address'])
})

t.test('maxRequestsPerClient from an untrusted peer: a spoofed X-Forwarded-For names nobody, the peer address is the client', async (t) => {
  const app = holdingApp()
  const { proxy } = await proxied(t, app.builder, { listener: { trustedProxies: ['10.0.0.0/8'] }, limits: { maxRequestsPerClient: 2 } })
  t.teardown(() => app.release())
  const held = [from(`${proxy.url}/hold`, '127.0.0.2', { 'x-forwarded-for': '203.0.113.1' }), from(`${proxy.url}/hold`, '127.0.0.2', { 'x-forwarded-for': '203.0.113.2' })]
  await until(() => app.held.length === 2, 5000)
  const third = await from(`${proxy.url}/hold`, '127.0.0.2', { 'x-forwarded-for': '203.0.113.3' })
  t.equal(third.status, 429, 'a third address in the header does not make a third client')
  t.equal(third.error, 'client_over_limit')
  const other = from(`${proxy.url}/hold`, '127.0.0.3')
  await until(() => app.held.length === 3, 5000)
  t.pass('another peer address is another client')
  const status = (await json<{ clients: { busiest: Array<{ client: string; requests: number }> } }>(`${proxy.adminUrl}/status`)).body
  t.same(status.clients.busiest[0], { client: '127.0.0.2', requests: 2, connections: 0 }, '/status names the busiest client by its key')
  app.release()
  const lines = await Promise.all((await Promise.all([...held, other])).map((r) => proxy.accessLine(r.id)))
  t.same(lines.map((l) => l.clientKey), [undefined, undefined, undefined], 'the key is the peer address: no clientKey in the access line')
})

t.test('maxRequestsPerClient behind a trusted proxy: the client it names is the client, counted apart from its neighbours', async (t) => {
  const app = holdingApp()
  const { up, proxy } = await proxied(t, app.builder, { listener: { trustedProxies: ['127.0.0.4/32'] }, limits: { maxRequestsPerClient: 2 } })
  t.teardown(() => app.release())
  const ingress = (client: string) => from(`${proxy.url}/hold`, '127.0.0.4', { 'x-forwarded-for': `198.51.100.7, ${client}` })
  const alice = [ingress('203.0.113.1'), ingress('203.0.113.1')]
  const bob = [ingress('203.0.113.2'), ingress('203.0.113.2')]
  await until(() => app.held.length === 4, 5000)
  const aliceAgain = await ingress('203.0.113.1')
  t.equal(aliceAgain.status, 429, 'the third of one client is refused...')
  t.equal(app.held.length, 4, '...while its neighbour behind the same proxy has its two')
  t.equal(up.seen[0]!.headers['x-forwarded-for'], '198.51.100.7, 203.0.113.1, 127.0.0.4', "a trusted proxy's chain is passed on, the peer appended")
  app.release()
  const served = await Promise.all([...alice, ...bob])
  t.same(
    served.map((r) => r.status),
    [200, 200, 200, 200],
  )
  const line = await proxy.accessLine(served[0]!.id)
  t.equal(line.client, '127.0.0.4', 'the access line keeps the peer...')
  t.equal(line.clientKey, 'forwarded:203.0.113.1', '...and names the client the policies counted')
})

t.test('a trusted proxy whose chain ends in trusted hops and garbage: the hops are skipped, garbage names nobody', async (t) => {
  const app = holdingApp()
  const { proxy } = await proxied(t, app.builder, { listener: { trustedProxies: ['127.0.0.0/8', '10.0.0.0/8'] }, limits: { maxRequestsPerClient: 5 } })
  t.teardown(() => app.release())
  app.release()
  const cases: Array<[string | undefined, string | undefined]> = [
    ['203.0.113.9, 10.1.1.1, 10.2.2.2', 'forwarded:203.0.113.9'], // two inner proxies, then the client
    ['10.1.1.1', 'forwarded:10.1.1.1'], // every hop trusted: the first
    ['203.0.113.9, not-an-address', undefined], // the peer appended junk: nobody
    [undefined, undefined],
  ]
  for (const [xff, key] of cases) {
    const r = await from(`${proxy.url}/hold`, '127.0.0.5', xff === undefined ? {} : { 'x-forwarded-for': xff })
    t.equal((await proxy.accessLine(r.id)).clientKey, key, `x-forwarded-for: ${xff}`)
  }
})

t.test('clientHeader: Forwarded (RFC 7239), or a header whose value names the client', async (t) => {
  const app = holdingApp()
  app.release()
  const forwarded = await proxied(t, app.builder, { listener: { trustedProxies: ['127.0.0.0/8'], clientHeader: 'forwarded' } })
  const r1 = await from(`${forwarded.proxy.url}/hold`, '127.0.0.6', { forwarded: 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"' })
  t.equal((await forwarded.proxy.accessLine(r1.id)).clientKey, 'forwarded:2001:db8:cafe::17')
  const named = await proxied(t, app.builder, { listener: { trustedProxies: ['127.0.0.0/8'], clientHeader: 'x-client-id' }, routes: [{ name: 'api', rateLimit: { requestsPerSecond: 1, burst: 1, key: 'client' } }] })
  const a = await from(`${named.proxy.url}/hold`, '127.0.0.6', { 'x-client-id': 'tenant-a' })
  const b = await from(`${named.proxy.url}/hold`, '127.0.0.6', { 'x-client-id': 'tenant-b' })
  const a2 = await from(`${named.proxy.url}/hold`, '127.0.0.6', { 'x-client-id': 'tenant-a' })
  t.same([a.status, b.status, a2.status], [200, 200, 429], 'rate limits keyed by client count the client the proxy named')
  t.equal((await named.proxy.accessLine(b.id)).clientKey, 'header:tenant-b')
})

t.test('mTLS: a verified client certificate is the client, by its SPIFFE ID', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-crowd-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = opensslCa('mesh')
  const server = opensslIssue(ca, { commonName: 'localhost', names: ['localhost'], usage: 'server' })
  const frontend = opensslIssue(ca, { commonName: 'frontend', names: ['spiffe://cluster.local/ns/shop/sa/frontend'], usage: 'client' })
  const write = (name: string, text: string) => {
    writeFileSync(join(dir, name), text)
    return join(dir, name)
  }
  const app = holdingApp()
  const { proxy } = await proxied(t, app.builder, {
    listener: { tls: { certFile: write('tls.crt', server.cert), keyFile: write('tls.key', server.key), clientCaFile: write('ca.crt', ca.cert), requireClientCert: false } },
    limits: { maxRequestsPerClient: 1 },
  })
  t.teardown(() => app.release())
  const url = `https://localhost:${proxy.port}/hold`
  const agent = new https.Agent({ keepAlive: true, ca: ca.cert, cert: frontend.cert, key: frontend.key })
  t.teardown(() => agent.destroy())
  const held = request(url, { agent })
  await until(() => app.held.length === 1, 5000)
  const second = await request(url, { agent })
  t.equal(second.status, 429, 'the second request of one identity over its limit of 1')
  const anonymous = request(url, { tls: { ca: ca.cert } })
  await until(() => app.held.length === 2, 5000)
  t.pass('a client without a certificate is another client (its address)')
  app.release()
  const [first, other] = await Promise.all([held, anonymous])
  t.equal((await proxy.accessLine(String(first.headers['x-request-id']))).clientKey, 'cert:spiffe://cluster.local/ns/shop/sa/frontend')
  t.equal((await proxy.accessLine(String(other.headers['x-request-id']))).clientKey, undefined)
})
