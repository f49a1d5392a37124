// Sidecar to sidecar over mTLS, with two real proxies on loopback: a "stable" sidecar whose
// backend is https://, and a "canary" sidecar in front of its own app that requires client
// certificates from the mesh CA. Certificates are made by the openssl command. Each failure of
// trust, either way, is a 502 upstream_tls that reaches no app and says in words what is wrong;
// rotations on either side are picked up without a restart.
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { metric, request, until } from '../fixtures/client.js'
import { opensslCa, opensslIssue, type Pem } from '../fixtures/openssl.js'
import { startProxy, startProxyFromFile, type RunningProxy } from '../fixtures/proxy.js'
import { MountedDir } from '../fixtures/mount.js'
import { SecretDir } from '../fixtures/tls.js'
import { fakeUpstream, type RunningUpstream } from '../fixtures/upstream.js'

const CANARY_NAME = 'shop-canary.default.svc'
const mesh = opensslCa('mesh CA')
const stranger = opensslCa('stranger CA')
const canaryServer = opensslIssue(mesh, { commonName: 'shop-canary', names: [CANARY_NAME], usage: 'server' })
const strangerServer = opensslIssue(stranger, { commonName: 'shop-canary', names: [CANARY_NAME], usage: 'server' })
const stableClient = opensslIssue(mesh, { commonName: 'stable-a', names: ['shop.default.svc'], usage: 'client' })
const rotatedClient = opensslIssue(mesh, { commonName: 'stable-b', names: ['shop.default.svc'], usage: 'client' })
const strangerClient = opensslIssue(stranger, { commonName: 'stable-x', names: ['shop.default.svc'], usage: 'client' })

/** A certificate's notAfter as the expiry gauge gives it (Unix seconds). */
const notAfter = (pem: Pem) => new Date(new X509Certificate(pem.cert).validTo).getTime() / 1000

/** Words a body may never carry: OpenSSL's and Node's raw error text. */
const OPENSSL_TEXT = /SSL|alert|routines|ERR_|UNABLE_TO|certificate verify failed/

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-mtls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function file(dir: string, name: string, content: string): string {
  const path = join(dir, name)
  writeFileSync(path, content)
  return path
}

/** The canary pod: its app, and its sidecar requiring client certificates from `clientCa`. */
async function canaryPod(t: Test, o: { server?: Pem; clientCa?: string } = {}): Promise<{ app: RunningUpstream; sidecar: RunningProxy }> {
  const dir = tempDir(t)
  const server = o.server ?? canaryServer
  const app = await fakeUpstream().listen()
  const sidecar = await startProxy(app.url, {
    listener: {
      tls: {
        certFile: file(dir, 'tls.crt', server.cert),
        keyFile: file(dir, 'tls.key', server.key),
        clientCaFile: file(dir, 'ca.crt', o.clientCa ?? mesh.cert),
        requireClientCert: true,
        clientSubjectHeader: 'x-client-subject',
      },
    },
  })
  t.teardown(async () => {
    await sidecar.close()
    await app.close()
  })
  return { app, sidecar }
}

/** The stable pod's sidecar, its one backend the canary sidecar over https. */
async function stableSidecar(t: Test, canary: RunningProxy, tls: Record<string, unknown>, more: Record<string, unknown> = {}): Promise<RunningProxy> {
  const url = `https://127.0.0.1:${canary.port}`
  const proxy = await startProxy(url, { backends: [{ name: 'canary', url, tls }], ...more })
  t.teardown(() => proxy.close())
  return proxy
}

function meshFiles(t: Test, client: Pem | null = stableClient, ca = mesh.cert): Record<string, string> {
  const dir = tempDir(t)
  return {
    caFile: file(dir, 'ca.crt', ca),
    ...(client && { certFile: file(dir, 'tls.crt', client.cert), keyFile: file(dir, 'tls.key', client.key) }),
    serverName: CANARY_NAME,
  }
}

t.test('mesh CA and client certificate: the request crosses, and the canary sidecar saw who sent it', async (t) => {
  const { app, sidecar } = await canaryPod(t)
  const stable = await stableSidecar(t, sidecar, meshFiles(t))
  const reply = await request(`${stable.url}/orders?id=7`, { method: 'POST', body: 'hello' })
  t.equal(reply.status, 200, reply.body.toString())
  t.equal(app.seen.length, 1)
  t.equal(app.seen[0]!.url, '/orders?id=7')
  t.match(app.seen[0]!.headers['x-client-subject'], /CN=stable-a/, "the canary sidecar verified the stable sidecar's certificate")
  t.equal(app.seen[0]!.headers.host, `127.0.0.1:${stable.port}`, "the client's Host goes through; SNI stays the configured serverName")
  t.equal(stable.app.backends().canary?.healthy, true, 'health checks go over the same TLS settings')
  // keep-alive: a second request reuses the pool's connection
  await request(`${stable.url}/again`)
  t.equal(app.seen[1]!.remotePort, app.seen[0]!.remotePort, 'the connection between the sidecars is reused')
  t.ok((await metric(stable.adminUrl, 'sidecar_upstream_tls_cert_expiry_timestamp_seconds{backend="canary"}')) > Date.now() / 1000, 'the client certificate expiry is exported')
})

const failures: Array<[string, (t: Test) => Promise<{ canary: Awaited<ReturnType<typeof canaryPod>>; tls: Record<string, unknown> }>, RegExp]> = [
  [
    'the canary serves a certificate from a stranger CA',
    async (t) => ({ canary: await canaryPod(t, { server: strangerServer }), tls: meshFiles(t) }),
    /not signed by a CA this proxy trusts/,
  ],
  [
    'the stable sidecar shows a client certificate from a stranger CA',
    async (t) => ({ canary: await canaryPod(t), tls: meshFiles(t, strangerClient) }),
    /refused ours/,
  ],
  ['the stable sidecar shows no client certificate', async (t) => ({ canary: await canaryPod(t), tls: meshFiles(t, null) }), /client certificate/],
  [
    'the stable sidecar expects another name',
    async (t) => ({ canary: await canaryPod(t), tls: { ...meshFiles(t), serverName: 'shop-canary.other.svc' } }),
    /does not carry the name/,
  ],
  [
    'no serverName: the URL is an IP address the certificate does not carry',
    async (t) => ({ canary: await canaryPod(t), tls: { caFile: meshFiles(t).caFile!, certFile: meshFiles(t).certFile!, keyFile: meshFiles(t).keyFile! } }),
    /does not carry the name/,
  ],
]

for (const [name, setup, reason] of failures) {
  t.test(`${name}: 502 upstream_tls, the app gets nothing`, async (t) => {
    const { canary, tls } = await setup(t)
    const stable = await stableSidecar(t, canary.sidecar, tls)
    for (const method of ['GET', 'POST']) {
      const reply = await request(`${stable.url}/pay`, { method, body: 'x' })
      t.equal(reply.status, 502, `${method}: ${reply.body.toString()}`)
      t.equal(reply.headers['x-sidecar-error'], 'upstream_tls')
      const body = JSON.parse(reply.body.toString()) as { message: string }
      t.match(body.message, reason, 'the reason in words')
      t.notMatch(body.message, OPENSSL_TEXT, 'no OpenSSL text in the body')
    }
    t.equal(canary.app.seen.length, 0, 'the canary app received nothing')
    // retried like a connect failure (nothing was sent), the POST too
    t.equal(await metric(stable.adminUrl, 'sidecar_upstream_attempts_total{backend="canary",result="upstream_tls"}'), 4, 'two attempts per request')
    const warnings = stable.logs.filter((l) => l.msg === 'TLS to the backend fails: requests to it get 502 upstream_tls')
    t.equal(warnings.length, 1, 'logged once, not per request')
    t.match(warnings[0]?.reason, reason)
  })
}

t.test('the breaker counts TLS failures like any upstream failure', async (t) => {
  const { sidecar } = await canaryPod(t, { server: strangerServer })
  const stable = await stableSidecar(t, sidecar, meshFiles(t), { retry: { attempts: 1 }, circuitBreaker: { volumeThreshold: 3 } })
  const codes = []
  for (let i = 0; i < 5; i++) codes.push((await request(`${stable.url}/`)).headers['x-sidecar-error'])
  t.same(codes.slice(0, 3), ['upstream_tls', 'upstream_tls', 'upstream_tls'])
  t.equal(codes.at(-1), 'circuit_open', 'opened after three')
})

t.test('a rotated client certificate is used for new connections; a fix is logged once', async (t) => {
  const { app, sidecar } = await canaryPod(t)
  const dir = tempDir(t)
  const secret = new SecretDir(join(dir, 'client'))
  secret.write(stableClient.cert, stableClient.key)
  const stable = await stableSidecar(t, sidecar, { caFile: file(dir, 'ca.crt', mesh.cert), certFile: secret.certFile, keyFile: secret.keyFile, serverName: CANARY_NAME })
  await request(`${stable.url}/before`)
  t.match(app.seen.at(-1)!.headers['x-client-subject'], /CN=stable-a/)
  const expiry = () => metric(stable.adminUrl, 'sidecar_upstream_tls_cert_expiry_timestamp_seconds{backend="canary"}')
  t.equal(await expiry(), notAfter(stableClient), "the client certificate's expiry")

  // a broken rotation (a key that is not the certificate's) keeps the last good pair
  secret.write(rotatedClient.cert, stableClient.key)
  await until(() => stable.logs.some((l) => l.msg === "a backend's TLS files reload failed; the last good ones stay in force"))
  t.equal(await metric(stable.adminUrl, 'sidecar_config_reloads_total{kind="upstream_tls",result="failure"}'), 1)
  t.equal((await request(`${stable.url}/still`)).status, 200, 'still served with the last good pair')

  secret.write(rotatedClient.cert, rotatedClient.key)
  await until(() => stable.logs.some((l) => l.msg === "a backend's TLS files reloaded: new connections use them"))
  t.equal(await metric(stable.adminUrl, 'sidecar_config_reloads_total{kind="upstream_tls",result="success"}'), 1)
  await request(`${stable.url}/after`)
  t.match(app.seen.at(-1)!.headers['x-client-subject'], /CN=stable-b/, 'the new certificate, within seconds')
  t.equal(await expiry(), notAfter(rotatedClient), "the rotated certificate's expiry")

  // now the canary stops trusting the mesh CA; then a fix comes back
  secret.write(strangerClient.cert, strangerClient.key)
  await until(() => stable.logs.filter((l) => l.msg === "a backend's TLS files reloaded: new connections use them").length === 2)
  for (let i = 0; i < 3; i++) t.equal((await request(`${stable.url}/x`)).headers['x-sidecar-error'], 'upstream_tls')
  secret.write(stableClient.cert, stableClient.key)
  await until(() => stable.logs.filter((l) => l.msg === "a backend's TLS files reloaded: new connections use them").length === 3)
  t.equal((await request(`${stable.url}/fixed`)).status, 200)
  t.equal(stable.logs.filter((l) => l.msg === 'TLS to the backend fails: requests to it get 502 upstream_tls').length, 1)
  t.equal(stable.logs.filter((l) => l.msg === 'TLS to the backend works again').length, 1)
})

t.test('a config reload naming a TLS file that cannot be used fails whole; the last good config serves on', async (t) => {
  const { app, sidecar } = await canaryPod(t)
  const dir = tempDir(t)
  const tls = meshFiles(t)
  const configFile = join(dir, 'config.json')
  const url = `https://127.0.0.1:${sidecar.port}`
  const write = (weight: number, caFile: string) => writeFileSync(configFile, JSON.stringify({ backends: [{ name: 'canary', url, weight, tls: { ...tls, caFile } }] }))
  write(100, tls.caFile!)
  const stable = await startProxyFromFile(configFile)
  t.teardown(() => stable.close())
  t.equal((await request(`${stable.url}/one`)).status, 200)

  write(50, join(dir, 'missing-ca.crt'))
  const failed = await stable.app.reload('test')
  t.equal(failed.result, 'failure')
  t.match(failed.problems, [/^backends\[0\]\.tls\.caFile: cannot read the CA bundle/])
  t.equal(stable.app.config().config.backends[0]!.weight, 100, 'nothing of the new config was applied')
  t.equal((await request(`${stable.url}/two`)).status, 200, 'still served')

  write(50, tls.caFile!)
  t.equal((await stable.app.reload('test')).result, 'success')
  t.equal((await request(`${stable.url}/three`)).status, 200)
  t.equal(app.seen.length, 3)
})

t.test("the canary's listener: a rotated certificate keeps client certificates checked against the mesh CA; a renewed CA bundle is read live", async (t) => {
  const dir = tempDir(t)
  // cert-manager's Secret: tls.crt, tls.key and ca.crt, renewed together
  const mount = new MountedDir(join(dir, 'tls'), ['tls.crt', 'tls.key', 'ca.crt'])
  mount.update({ 'tls.crt': canaryServer.cert, 'tls.key': canaryServer.key, 'ca.crt': mesh.cert })
  const app = await fakeUpstream().listen()
  const canary = await startProxy(app.url, {
    listener: { tls: { certFile: mount.path('tls.crt'), keyFile: mount.path('tls.key'), clientCaFile: mount.path('ca.crt'), clientSubjectHeader: 'x-client-subject' } },
  })
  t.teardown(async () => {
    await canary.close()
    await app.close()
  })
  const reloads = () => canary.logs.filter((l) => l.msg === 'certificate reloaded').length
  const through = async (client: Pem, ca: string) => {
    const stable = await stableSidecar(t, canary, meshFiles(t, client, ca))
    const reply = await request(`${stable.url}/`)
    await stable.close()
    return reply.headers['x-sidecar-error'] ?? reply.status
  }
  t.equal(await through(stableClient, mesh.cert), 200)

  // the server certificate alone is rotated: mesh clients still pass, strangers still do not
  const renewed = opensslIssue(mesh, { commonName: 'shop-canary', names: [CANARY_NAME], usage: 'server' })
  mount.update({ 'tls.crt': renewed.cert, 'tls.key': renewed.key, 'ca.crt': mesh.cert })
  await until(() => reloads() === 1)
  t.equal(await through(stableClient, mesh.cert), 200, 'a mesh client certificate is still accepted after a rotation')
  t.equal(await through(strangerClient, mesh.cert), 'upstream_tls', 'a stranger is still refused')

  // a new mesh CA: its server certificate and its bundle in one swap
  const mesh2 = opensslCa('mesh CA 2')
  const server2 = opensslIssue(mesh2, { commonName: 'shop-canary', names: [CANARY_NAME], usage: 'server' })
  const client2 = opensslIssue(mesh2, { commonName: 'stable-2', names: ['shop'], usage: 'client' })
  mount.update({ 'tls.crt': server2.cert, 'tls.key': server2.key, 'ca.crt': mesh2.cert })
  await until(() => reloads() === 2)
  t.equal(await through(client2, mesh2.cert), 200, 'a client of the new CA is accepted, no restart')
  t.equal(await through(stableClient, mesh2.cert), 'upstream_tls', 'one of the old CA is not')
  t.equal(app.seen.length, 3)
})
