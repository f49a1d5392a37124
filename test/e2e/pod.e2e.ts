// The pod simulation (`npm run test:e2e`): a network namespace plays the pod. Loopback inside it
// is the pod's loopback; a veth pair on a private /30 of our own is the pod's network. The built
// sidecar and the example app run inside it in native-sidecar order, with the config from
// k8s/base/sidecar.yaml (the ConfigMap), and are reached from outside only through the veth
// address, as the kubelet and the Service would reach them. Needs root and iproute2 (`ip netns`);
// where a namespace cannot be created the test says so and skips.
//
// The second test is k8s/overlays/canary: a stable pod and a canary pod, each its own namespace
// with its own veth /30 to the host (the node), and a direct veth between the two pods, their
// pod-to-pod network. The 90/10 split crosses that link over mTLS, with certificates made by the
// openssl command as cert-manager would issue them (mesh-certificates.yaml). Needs openssl too.
import { spawn, spawnSync, execFile, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import type { IncomingHttpHeaders } from 'node:http'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { dirname } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { parse, parseAllDocuments, stringify } from 'yaml'
import { createCa, issueCertificate } from '../../src/certs/generate.js'

const exec = promisify(execFile)
const root = new URL('../../', import.meta.url).pathname
const id = process.pid % 10_000
// 10.213.0.0/16 is this test's; each run takes a /24 of it by pid, and each pod a /30 of that
const octet = id % 250

interface Pod {
  /** The network namespace that plays the pod. */
  ns: string
  /** One letter for the pod in interface names (which allow 15 characters). */
  tag: string
  /** The pod's network, a veth pair: its end on the host (the node) and its end in the pod. */
  hostIf: string
  podIf: string
  hostIp: string
  /** The pod IP. */
  ip: string
}

/** The pod `name` on the `index`th /30 of this run's /24 (its first pod keeps the plain names). */
function podAt(index: number, name: string): Pod {
  const tag = name.slice(0, 1)
  return {
    ns: name === '' ? `sidecar-e2e-${id}` : `sidecar-e2e-${id}-${name}`,
    tag,
    hostIf: `sce${id}${tag}h`,
    podIf: `sce${id}${tag}p`,
    hostIp: `10.213.${octet}.${4 * index + 1}`,
    ip: `10.213.${octet}.${4 * index + 2}`,
  }
}

const POD = podAt(0, '')
const POD_IP = POD.ip
const SHOP = podAt(1, 'shop') // the stable pod of the canary overlay
const CANARY = podAt(2, 'canary')

/** Namespaces made and processes started, for the last-resort cleanup at exit. */
const namespaces = new Set<string>()
const started: Proc[] = []
// Normally each test's teardown has removed everything by now; this is for a run that ends
// without its teardowns (a crash, a timeout), so that no namespace, veth or process stays.
process.once('exit', () => {
  for (const p of started) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
  for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns])
})

async function ip(...args: string[]): Promise<void> {
  await exec('ip', args)
}

/** Creates the pod's namespace and veth; resolves with why it cannot, or undefined. */
async function createPod(pod: Pod): Promise<string | undefined> {
  try {
    await ip('netns', 'add', pod.ns)
  } catch (err) {
    return `cannot create a network namespace here (needs root and iproute2): ${(err as Error).message.split('\n')[0]}`
  }
  namespaces.add(pod.ns)
  try {
    // its pod end made inside the namespace: whatever fails next, deleting the namespace removes the pair
    await ip('link', 'add', pod.hostIf, 'type', 'veth', 'peer', 'name', pod.podIf, 'netns', pod.ns)
    await ip('addr', 'add', `${pod.hostIp}/30`, 'dev', pod.hostIf)
    await ip('link', 'set', pod.hostIf, 'up')
    await ip('-n', pod.ns, 'addr', 'add', `${pod.ip}/30`, 'dev', pod.podIf)
    await ip('-n', pod.ns, 'link', 'set', pod.podIf, 'up')
    await ip('-n', pod.ns, 'link', 'set', 'lo', 'up')
  } catch (err) {
    await deletePod(pod)
    throw err
  }
  return undefined
}

/**
 * The pod-to-pod network between two pods: a veth pair straight from one namespace to the other,
 * unnumbered, as CNI plugins route pods. Each pod reaches the other's pod IP over it with a /32
 * route, from its own pod IP, so that each pod keeps the one address the host also knows it by.
 * No address of its own and nothing forwarded anywhere: no sysctl changes, on the host or in a pod.
 */
async function linkPods(a: Pod, b: Pod): Promise<void> {
  const aIf = `sce${id}${a.tag}${b.tag}`
  const bIf = `sce${id}${b.tag}${a.tag}`
  await ip('-n', a.ns, 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf, 'netns', b.ns)
  await ip('-n', a.ns, 'link', 'set', aIf, 'up')
  await ip('-n', b.ns, 'link', 'set', bIf, 'up')
  await ip('-n', a.ns, 'route', 'add', `${b.ip}/32`, 'dev', aIf, 'src', a.ip)
  await ip('-n', b.ns, 'route', 'add', `${a.ip}/32`, 'dev', bIf, 'src', b.ip)
}

/** Deleting the namespace takes its veths with it (both ends), once no process is left in it. */
async function deletePod(pod: Pod): Promise<void> {
  await ip('netns', 'del', pod.ns).catch(() => {})
  namespaces.delete(pod.ns)
}

/** Every test's teardown, whatever state the test failed in: its processes killed, by pid, and
 *  waited for (a namespace outlives its `ip netns del` while a process is in it), then its pods. */
async function removePods(procs: Proc[], pods: Pod[]): Promise<void> {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
  let timer: NodeJS.Timeout | undefined
  await Promise.race([Promise.all(procs.map((p) => p.exited)), new Promise((resolve) => (timer = setTimeout(resolve, 3000)))])
  clearTimeout(timer)
  for (const pod of pods) await deletePod(pod)
}

interface Proc {
  child: ChildProcess
  lines: Array<Record<string, unknown>>
  exited: Promise<number | null>
}

/** A process inside the pod (`ip netns exec` replaces itself with it: the pid is the process's). */
function inPod(pod: Pod, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn('ip', ['netns', 'exec', pod.ns, process.execPath, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines: Array<Record<string, unknown>> = []
  let buffered = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const parts = buffered.split('\n')
    buffered = parts.pop()!
    for (const p of parts) if (p.startsWith('{')) lines.push(JSON.parse(p))
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const proc = { child, lines, exited }
  started.push(proc)
  return proc
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

interface Reply {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

function get(url: string, opts: https.RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const client = url.startsWith('https:') ? https : http
    const req = client.get(url, { timeout: 5000, ...opts }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
  })
}

/** A condition for waitFor: `url` answers `status`. */
const answers = (url: string, status: number) => () => get(url).then((r) => r.status === status, () => false)

/** The same in a pod (a script for `node -e`): how a TCP connection to argv[1]:argv[2] ends. */
const TCP_PROBE = `
const socket = require('node:net').connect(Number(process.argv[2]), process.argv[1])
const done = (result) => { console.log(JSON.stringify({ result })); socket.destroy() }
socket.setTimeout(2000, () => done('timeout'))
socket.on('connect', () => done('connected'))
socket.on('error', (err) => done(err.code))
`

/** How a TCP connection to address:port from the host, or from inside a pod, ends: "connected",
 *  "timeout" (2 s) or the error's code (ECONNREFUSED: the address is reached, nothing listens). */
async function connectFrom(from: Pod | 'host', address: string, port: number): Promise<string> {
  if (from !== 'host') {
    const probe = inPod(from, ['-e', TCP_PROBE, address, String(port)])
    await probe.exited
    return String(probe.lines[0]?.result)
  }
  return new Promise((resolve) => {
    const socket = net.connect(port, address)
    const done = (result: string) => {
      resolve(result)
      socket.destroy()
    }
    socket.setTimeout(2000, () => done('timeout'))
    socket.on('connect', () => done('connected'))
    socket.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message))
  })
}

interface KeyPair {
  cert: string
  key: string
}

/** What a cert-manager Certificate asks for (the part of its spec used here). */
interface CertificateSpec {
  isCA?: boolean
  commonName?: string
  dnsNames?: string[]
  usages?: string[]
}

/** cert-manager's usages, as openssl's keyUsage and extendedKeyUsage say them. */
const KEY_USAGE: Record<string, string> = { 'digital signature': 'digitalSignature', 'key encipherment': 'keyEncipherment' }
const EXTENDED_KEY_USAGE: Record<string, string> = { 'server auth': 'serverAuth', 'client auth': 'clientAuth' }

/**
 * The certificate a cert-manager Certificate describes, made with the openssl command: ECDSA
 * P-256 as in mesh-certificates.yaml, a day long; a CA (isCA) signs itself, anything else is signed
 * by the CA whose files are `${ca}.crt` and `${ca}.key`. Its own are `${path}.crt` and
 * `${path}.key`; resolves with their PEM text.
 */
async function openssl(path: string, spec: CertificateSpec, ca?: string): Promise<KeyPair> {
  mkdirSync(dirname(path), { recursive: true })
  const usages = spec.usages ?? ['digital signature', 'key encipherment'] // cert-manager's default
  const usage = (table: Record<string, string>) => usages.filter((u) => u in table).map((u) => table[u])
  const unknown = usages.filter((u) => !(u in KEY_USAGE) && !(u in EXTENDED_KEY_USAGE))
  if (unknown.length > 0) throw new Error(`usages this test cannot issue: ${unknown.join(', ')}`)
  const ext = spec.isCA
    ? ['basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash']
    : [
        'basicConstraints = critical, CA:FALSE',
        `keyUsage = critical, ${usage(KEY_USAGE).join(', ')}`,
        ...(usage(EXTENDED_KEY_USAGE).length > 0 ? [`extendedKeyUsage = ${usage(EXTENDED_KEY_USAGE).join(', ')}`] : []),
        ...(spec.dnsNames ? [`subjectAltName = ${spec.dnsNames.map((n) => `DNS:${n}`).join(', ')}`] : []),
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid',
      ]
  // a subject needs one name at least: without a commonName, the first DNS name
  const cn = spec.commonName ?? spec.dnsNames?.[0]
  writeFileSync(`${path}.cnf`, ['[req]', 'prompt = no', 'distinguished_name = dn', '[dn]', `CN = ${cn}`, '[ext]', ...ext, ''].join('\n'))
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${path}.key`, '-config', `${path}.cnf`]
  if (spec.isCA) {
    await exec('openssl', ['req', '-x509', ...newKey, '-extensions', 'ext', '-days', '1', '-out', `${path}.crt`])
  } else {
    if (ca === undefined) throw new Error(`${path}: a certificate needs its CA`)
    await exec('openssl', ['req', '-new', ...newKey, '-out', `${path}.csr`])
    const serial = `0x${randomBytes(16).toString('hex').replace(/^./, '1')}`
    await exec('openssl', ['x509', '-req', '-in', `${path}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', serial, '-days', '1', '-extfile', `${path}.cnf`, '-extensions', 'ext', '-out', `${path}.crt`])
  }
  return { cert: readFileSync(`${path}.crt`, 'utf8'), key: readFileSync(`${path}.key`, 'utf8') }
}

/** The Certificates of a cert-manager manifest, by name. */
function certificatesIn(file: string): Map<string, CertificateSpec> {
  const objects = parseAllDocuments(readFileSync(`${root}${file}`, 'utf8')).map((d) => d.toJS())
  return new Map(objects.filter((o) => o?.kind === 'Certificate').map((o) => [o.metadata.name, o.spec]))
}

/** The port of a `host:port` address of the config. */
const portOf = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1))

/** Puts files where a pod's Secret would be mounted (`mount` plays /etc/sidecar/<secret>). */
function mountSecret(mount: string, files: Record<string, string>): void {
  mkdirSync(mount, { recursive: true })
  for (const [name, text] of Object.entries(files)) writeFileSync(`${mount}/${name}`, text)
}

/** A sidecar config as its ConfigMap holds it, with the pod's mounts (/etc/sidecar/...) moved under
 *  `mounts`, and the test's shorter health checks and drain. */
function podConfig(file: string, mounts: string): any {
  const config = parse(readFileSync(`${root}${file}`, 'utf8').replaceAll('/etc/sidecar/', `${mounts}/`))
  for (const b of config.backends) b.healthCheck = { ...b.healthCheck, intervalMs: 200, timeoutMs: 200 }
  config.drain = { delayMs: 200, timeoutMs: 5000 }
  return config
}

/** A pod started in native-sidecar order: its sidecar with `config`, then, once the sidecar's
 *  /started passes (the kubelet holds the app until the startupProbe does), the app; resolves once
 *  /ready answers 200 from outside the pod. */
async function startPod(pod: Pod, mounts: string, config: { admin: { address: string } }, app: { args?: string[]; env: NodeJS.ProcessEnv }, procs: Proc[]): Promise<{ sidecar: Proc; app: Proc }> {
  mkdirSync(`${mounts}/config`, { recursive: true })
  writeFileSync(`${mounts}/config/config.yaml`, stringify(config))
  const sidecar = inPod(pod, [`${root}dist/main.js`, '--config', `${mounts}/config/config.yaml`])
  procs.push(sidecar)
  const admin = `http://${pod.ip}:${portOf(config.admin.address)}`
  await waitFor(`${pod.ns}: /started`, answers(`${admin}/started`, 200))
  const appProc = inPod(pod, [...(app.args ?? []), `${root}examples/app.mjs`], { APP_ADDRESS: '127.0.0.1:8080', ...app.env })
  procs.push(appProc)
  await waitFor(`${pod.ns}: /ready 200`, answers(`${admin}/ready`, 200))
  return { sidecar, app: appProc }
}

const cannot = await createPod(POD)
t.test('pod simulation: native-sidecar order, TLS through the pod network, Kubernetes stop order', { skip: cannot ?? false }, async (t) => {
  const procs: Proc[] = []
  t.teardown(() => removePods(procs, [POD]))

  // The certificate the Secret would hold, for the pod's address.
  const dir = t.testdir()
  const ca = createCa('sidecar-proxy e2e CA', 1)
  const server = issueCertificate(ca, { commonName: 'shop', hosts: ['shop', POD_IP], usage: 'server', days: 1 })
  writeFileSync(`${dir}/tls.crt`, server.cert)
  writeFileSync(`${dir}/tls.key`, server.key)
  // The ConfigMap's config, with the Secret's mount path moved here and shorter waits.
  const config = parse(readFileSync(`${root}k8s/base/sidecar.yaml`, 'utf8'))
  config.listener.tls = { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` }
  config.backends[0].healthCheck = { ...config.backends[0].healthCheck, intervalMs: 200, timeoutMs: 100 }
  config.drain = { delayMs: 500, timeoutMs: 10_000 }
  writeFileSync(`${dir}/config.yaml`, stringify(config))

  // 1. The sidecar first (an init container with restartPolicy Always).
  const sidecar = inPod(POD, [`${root}dist/main.js`, '--config', `${dir}/config.yaml`])
  procs.push(sidecar)
  const admin = `http://${POD_IP}:9901`
  // the kubelet's startupProbe, from outside the pod
  await waitFor('/started', answers(`${admin}/started`, 200))
  const notReady = await get(`${admin}/ready`)
  t.equal(notReady.status, 503, 'ready fails while the app is not there')
  t.match(notReady.body, /backend:app/, 'and says it waits for the app')

  // 2. The app only after /started (the kubelet holds it until the sidecar's startupProbe passes).
  const app = inPod(POD, [`${root}examples/app.mjs`], { APP_ADDRESS: '127.0.0.1:8080', STOP_DELAY_MS: '1000' })
  procs.push(app)
  await waitFor('/ready 200', answers(`${admin}/ready`, 200))
  t.pass('ready once the app answers its health check')

  // 3. Reached as the Service reaches it: TLS to the pod IP, verified against the CA.
  const tlsOpts = { ca: ca.cert, servername: 'shop' }
  const reply = await get(`https://${POD_IP}:8443/hello`, tlsOpts)
  t.equal(reply.status, 200)
  t.match(JSON.parse(reply.body), { app: 'app', path: '/hello' })
  t.equal(await connectFrom('host', POD_IP, 8080), 'ECONNREFUSED', 'the app is not reachable from outside the pod')
  const drainFromOutside = await new Promise<number>((resolve, reject) => {
    http.request(`${admin}/drain`, { method: 'POST' }, (res) => resolve(res.statusCode!)).on('error', reject).end()
  })
  t.equal(drainFromOutside, 403, 'nobody outside the pod can stop the sidecar')

  // 4. Load through the pod network, and a slow request in flight, when the pod is deleted.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 4, ...tlsOpts })
  let sending = true
  const results = { ok: 0, failed: [] as string[] }
  const worker = async () => {
    while (sending) {
      try {
        const r = await get(`https://${POD_IP}:8443/load`, { agent })
        if (r.status === 200) results.ok++
        else results.failed.push(`status ${r.status}`)
      } catch (err) {
        results.failed.push((err as Error).message)
      }
    }
  }
  const load = Promise.all(Array.from({ length: 4 }, worker))
  const slow = get(`https://${POD_IP}:8443/slow?delayMs=2000`, tlsOpts)
  await new Promise((resolve) => setTimeout(resolve, 300))

  // Kubernetes order: the app gets SIGTERM first; endpoints drop the pod meanwhile (the load
  // stops within the app's STOP_DELAY_MS); the sidecar gets SIGTERM once the app has exited.
  app.child.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 500))
  sending = false
  await load
  const slowReply = await slow
  t.equal(await app.exited, 0, 'the app finished its in-flight work and exited 0')
  sidecar.child.kill('SIGTERM')
  await waitFor('ready to fail during the drain', () => get(`${admin}/ready`).then((r) => r.status === 503, () => true), 2000)
  t.equal(await sidecar.exited, 0, 'the sidecar drained and exited 0')

  t.equal(slowReply.status, 200, 'the request in flight at deletion completed')
  t.match(JSON.parse(slowReply.body), { app: 'app', path: '/slow?delayMs=2000' })
  t.ok(results.ok > 50, `${results.ok} requests under load`)
  t.same(results.failed, [], 'no request failed')
  const errors = sidecar.lines.filter((l) => l.msg === 'request' && (l.error !== undefined || l.incomplete))
  t.same(errors, [], 'the access log has no error or cut-short request')
  t.ok(sidecar.lines.some((l) => l.msg === 'sidecar-proxy stopped' && l.cut === 0), 'nothing was cut at the stop')
  agent.destroy()
})

const noOpenssl = await exec('openssl', ['version']).then(() => undefined, () => 'needs the openssl command')
t.test('canary overlay: a stable and a canary pod, the 90/10 split across the pod network over mTLS', { skip: cannot ?? noOpenssl ?? false }, async (t) => {
  const procs: Proc[] = []
  t.teardown(() => removePods(procs, [SHOP, CANARY]))
  for (const pod of [SHOP, CANARY]) {
    const why = await createPod(pod)
    if (why !== undefined) throw new Error(why)
  }
  await linkPods(SHOP, CANARY)

  // What cert-manager would issue from mesh-certificates.yaml, by openssl: the mesh CA, the canary
  // sidecar's server certificate for the Service's names, the stable sidecars' client certificate.
  // Besides: the stable pods' own listener certificate (k8s/cert-manager-certificate.yaml, from
  // another issuer), and an impostor: the same client certificate from another CA of that name.
  const certificates = new Map([...certificatesIn('k8s/overlays/canary/mesh-certificates.yaml'), ...certificatesIn('k8s/cert-manager-certificate.yaml')])
  const spec = (name: string) => {
    const found = certificates.get(name)
    if (found === undefined) throw new Error(`no Certificate "${name}" in the manifests`)
    return found
  }
  const dir = t.testdir()
  const pki = `${dir}/pki`
  const [mesh, cluster] = await Promise.all([
    openssl(`${pki}/mesh-ca`, spec('mesh-ca')),
    openssl(`${pki}/cluster-ca`, { isCA: true, commonName: 'e2e cluster CA' }),
    openssl(`${pki}/rogue-ca`, spec('mesh-ca')),
  ])
  const [canaryServer, shopClient, shopServer, impostor] = await Promise.all([
    openssl(`${pki}/shop-canary-tls`, spec('shop-canary-tls'), `${pki}/mesh-ca`),
    openssl(`${pki}/shop-mesh-client`, spec('shop-mesh-client'), `${pki}/mesh-ca`),
    openssl(`${pki}/sidecar-tls`, spec('sidecar-tls'), `${pki}/cluster-ca`),
    openssl(`${pki}/impostor`, spec('shop-mesh-client'), `${pki}/rogue-ca`),
  ])
  const clientSubject = `CN=${spec('shop-mesh-client').commonName}`
  // Each pod's /etc/sidecar: the Secrets as the kubelet mounts them (tls.crt, tls.key, ca.crt).
  const shopMounts = `${dir}/shop`
  const canaryMounts = `${dir}/canary`
  mountSecret(`${shopMounts}/tls`, { 'tls.crt': shopServer.cert, 'tls.key': shopServer.key })
  const meshClient = { 'tls.crt': shopClient.cert, 'tls.key': shopClient.key, 'ca.crt': mesh.cert }
  mountSecret(`${shopMounts}/mesh`, meshClient)
  mountSecret(`${canaryMounts}/tls`, { 'tls.crt': canaryServer.cert, 'tls.key': canaryServer.key, 'ca.crt': mesh.cert })

  // The two ConfigMaps. The canary Service's one endpoint is the canary pod's IP (the Service maps
  // its port 443 to the sidecar's 8443); its certificate is still checked for the Service's name,
  // the URL's host in the file. The canary's app is told who called (the file sets no header).
  const shopConfig = podConfig('k8s/overlays/canary/shop/sidecar.yaml', shopMounts)
  const canaryBackend = shopConfig.backends.find((b: { name: string }) => b.name === 'canary')
  const service = new URL(canaryBackend.url).hostname
  const canaryConfig = podConfig('k8s/overlays/canary/shop-canary/sidecar.yaml', canaryMounts)
  const canaryPort = portOf(canaryConfig.listener.address)
  canaryBackend.url = `https://${CANARY.ip}:${canaryPort}`
  canaryBackend.tls.serverName = service
  const subjectHeader = canaryConfig.listener.tls.clientSubjectHeader as string // the overlay's: the app learns who called
  const shopPort = portOf(shopConfig.listener.address)

  // Both pods in native-sidecar order, side by side; the canary's app records what reaches it.
  const [shop, canary] = await Promise.all([
    startPod(SHOP, shopMounts, shopConfig, { env: {} }, procs),
    startPod(CANARY, canaryMounts, canaryConfig, { args: ['--import', `${root}test/e2e/log-requests.mjs`], env: { APP_NAME: 'canary' } }, procs),
  ])
  t.pass('both pods ready: /ready 200 on each sidecar')
  const shopAdmin = `http://${SHOP.ip}:${portOf(shopConfig.admin.address)}`
  const canaryHealth = async () => {
    const status = JSON.parse((await get(`${shopAdmin}/status`)).body)
    return status.backends.find((b: { name: string }) => b.name === 'canary').health as { healthy: boolean; reason: string }
  }
  // the canary does not gate the stable pod's readiness: the split takes it once its checks pass
  await waitFor('the stable sidecar to see the canary healthy', async () => (await canaryHealth()).healthy).catch(async (err: Error) => {
    throw new Error(`${err.message} (its last check: ${(await canaryHealth()).reason})`)
  })
  // (until then its health checks may have found the canary's app not started yet: not counted)
  const logFrom = { shop: shop.sidecar.lines.length, canary: canary.sidecar.lines.length }

  const received = (prefix: string) => canary.app.lines.filter((l) => l.msg === 'app received' && String(l.path).startsWith(prefix))
  const front = { ca: cluster.cert, servername: 'shop' } // as the Service's clients reach the stable pod
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8, ...front })
  t.teardown(() => agent.destroy())

  // 1. The split, from outside, through the stable pod's address only.
  const N = 400
  const byApp: Record<string, number> = {}
  const failed: string[] = []
  let sent = 0
  const splitStart = Date.now()
  const worker = async () => {
    while (sent < N) {
      const i = sent++
      try {
        const r = await get(`https://${SHOP.ip}:${shopPort}/split?i=${i}`, { agent })
        if (r.status !== 200) failed.push(`status ${r.status} ${r.headers['x-sidecar-error'] ?? ''}`)
        else {
          const app = String(JSON.parse(r.body).app)
          byApp[app] = (byApp[app] ?? 0) + 1
        }
      } catch (err) {
        failed.push((err as Error).message)
      }
    }
  }
  await Promise.all(Array.from({ length: 8 }, worker))
  const splitMs = Date.now() - splitStart
  t.same(failed, [], `all ${N} requests answered 200 (in ${splitMs} ms)`)
  t.same(Object.keys(byApp).sort(), ['app', 'canary'], 'answered by the stable app and the canary app, no one else')
  const canaryShare = byApp.canary ?? 0
  // binomial(400, 0.1): mean 40, sd 6; 4 sd either side
  const sd = Math.sqrt(N * 0.1 * 0.9)
  t.ok(Math.abs(canaryShare - N * 0.1) <= 4 * sd, `the canary answered ${canaryShare} of ${N} (10% is ${N * 0.1} ± ${4 * sd})`)

  // 2. Who the canary saw: each of its requests came over the pod-to-pod link from the stable
  // pod, with the stable sidecar's verified client certificate.
  await waitFor('the canary app to have recorded its share', () => received('/split').length >= canaryShare, 2000)
  const seen = received('/split').map((l) => l.headers as IncomingHttpHeaders)
  t.equal(seen.length, canaryShare, 'every canary answer went through the canary app once')
  t.same([...new Set(seen.map((h) => h[subjectHeader]))], [clientSubject], "the canary app got the stable sidecar's client certificate subject")
  t.same([...new Set(seen.map((h) => h['x-forwarded-for']))], [SHOP.ip], 'from the stable pod IP, over the pod-to-pod network')
  await waitFor('the canary access log', () => canary.sidecar.lines.filter((l) => l.msg === 'request' && String(l.path).startsWith('/split')).length >= canaryShare, 2000)
  const canaryLog = canary.sidecar.lines.filter((l) => l.msg === 'request' && String(l.path).startsWith('/split'))
  t.same(
    canaryLog.filter((l) => l.status !== 200 || l.client !== SHOP.ip || l.backend !== 'app'),
    [],
    "the canary sidecar's access log: each from the stable pod, 200 from its app",
  )

  // 3. The override header, whatever the weights; a caller's own x-client-subject never survives.
  const forced = await Promise.all(
    Array.from({ length: 5 }, (_, i) => get(`https://${SHOP.ip}:${shopPort}/forced?i=${i}`, { agent, headers: { 'x-canary': 'always', [subjectHeader]: 'CN=admin' } })),
  )
  t.same(
    forced.map((r) => [r.status, JSON.parse(r.body).app]),
    Array(5).fill([200, 'canary']),
    'x-canary: always reaches the canary',
  )
  await waitFor('the canary app to record the forced requests', () => received('/forced').length >= 5, 2000)
  t.same([...new Set(received('/forced').map((l) => (l.headers as IncomingHttpHeaders)[subjectHeader]))], [clientSubject], 'a client-sent x-client-subject is replaced by the verified one')
  const never = await Promise.all(Array.from({ length: 5 }, () => get(`https://${SHOP.ip}:${shopPort}/never`, { agent, headers: { 'x-canary': 'never' } })))
  t.same(
    never.map((r) => [r.status, JSON.parse(r.body).app]),
    Array(5).fill([200, 'app']),
    'x-canary: never stays with the stable app',
  )

  // 4. The canary app is reached only through its sidecar: its port refuses from the host and
  // from the stable pod (so the address is reached: nothing listens there but on loopback), while
  // the sidecar's port answers, and only mTLS clients of the mesh CA.
  t.equal(await connectFrom('host', CANARY.ip, 8080), 'ECONNREFUSED', "the canary app's port refuses connections from the host")
  t.equal(await connectFrom(SHOP, CANARY.ip, 8080), 'ECONNREFUSED', 'and from the stable pod')
  t.equal(await connectFrom(SHOP, CANARY.ip, canaryPort), 'connected', "while the stable pod reaches the canary sidecar's port")
  const toCanary = { ca: mesh.cert, servername: service }
  const direct = await get(`https://${CANARY.ip}:${canaryPort}/direct`, { ...toCanary, cert: shopClient.cert, key: shopClient.key })
  t.match([direct.status, JSON.parse(direct.body)], [200, { app: 'canary' }], "the canary sidecar's port answers TLS, to a client with a mesh client certificate")
  const refusal = (reply: Promise<Reply>) => reply.then((r) => `answered ${r.status}`, (err: NodeJS.ErrnoException) => err.code ?? err.message)
  const noCert = await refusal(get(`https://${CANARY.ip}:${canaryPort}/no-cert`, toCanary))
  t.match(noCert, /^(ECONNRESET|ERR_SSL_\w+)$/, `and refuses a client without a client certificate (${noCert})`)
  const byImpostor = await refusal(get(`https://${CANARY.ip}:${canaryPort}/impostor`, { ...toCanary, cert: impostor.cert, key: impostor.key }))
  t.match(byImpostor, /^(ECONNRESET|ERR_SSL_\w+)$/, `and one whose certificate comes from another CA of the same name (${byImpostor})`)
  t.same(received('/no-cert').concat(received('/impostor')), [], 'neither reached the canary app')

  // 5. The stable sidecar's client certificate goes wrong (a bad rotation: the right name, the
  // wrong CA): requests forced to the canary get 502 upstream_tls, the stable pod stays ready, and
  // the good certificate back puts things right, without a restart.
  const reloads = () => shop.sidecar.lines.filter((l) => l.msg === "a backend's TLS files reloaded: new connections use them").length
  const before = reloads()
  mountSecret(`${shopMounts}/mesh`, { 'tls.crt': impostor.cert, 'tls.key': impostor.key })
  await waitFor('the stable sidecar to reload its mesh client certificate', () => reloads() > before, 5000)
  const broken: Reply[] = []
  for (let i = 0; i < 3; i++) broken.push(await get(`https://${SHOP.ip}:${shopPort}/tls-broken?i=${i}`, { agent, headers: { 'x-canary': 'always' } }))
  t.same(
    broken.map((r) => [r.status, r.headers['x-sidecar-error']]),
    Array(3).fill([502, 'upstream_tls']),
    'requests to the canary with a client certificate it refuses: 502, x-sidecar-error: upstream_tls',
  )
  const logged = (msg: string) => () => shop.sidecar.lines.filter((l) => l.msg === msg && l.backend === 'canary').length
  await waitFor('the stable sidecar to log the failing handshakes', () => logged('TLS to the backend fails: requests to it get 502 upstream_tls')() > 0, 2000)
  await waitFor('the stable sidecar to see the canary unhealthy', async () => !(await canaryHealth()).healthy, 5000)
  t.equal((await get(`${shopAdmin}/ready`)).status, 200, 'the stable pod stays ready while its canary fails (gatesReadiness: false)')
  const meanwhile = await get(`https://${SHOP.ip}:${shopPort}/meanwhile`, { agent })
  t.match([meanwhile.status, JSON.parse(meanwhile.body)], [200, { app: 'app' }], 'and serves from its own app')
  t.same(received('/tls-broken'), [], 'nothing reached the canary app')
  const reloaded = reloads()
  mountSecret(`${shopMounts}/mesh`, meshClient)
  await waitFor('the stable sidecar to reload the good certificate', () => reloads() > reloaded, 5000)
  const fixed = await get(`https://${SHOP.ip}:${shopPort}/tls-fixed`, { agent, headers: { 'x-canary': 'always' } })
  t.match([fixed.status, JSON.parse(fixed.body)], [200, { app: 'canary' }], 'the good certificate back: the canary answers again')
  await waitFor('the stable sidecar to log the handshakes working again', () => logged('TLS to the backend works again')() > 0, 2000)
  t.equal(logged('TLS to the backend fails: requests to it get 502 upstream_tls')(), 1, "the stable sidecar's log said why once, not per request")
  await waitFor('the stable sidecar to see the canary healthy again', async () => (await canaryHealth()).healthy, 5000)

  // 6. Both pods deleted, each in Kubernetes order (its app, then its sidecar once the app has
  // exited); the stable pod first, so that no health check of its own meets a canary going away.
  for (const p of [shop, canary]) {
    p.app.child.kill('SIGTERM')
    t.equal(await p.app.exited, 0, 'the app exited 0')
    p.sidecar.child.kill('SIGTERM')
    t.equal(await p.sidecar.exited, 0, 'its sidecar drained and exited 0')
  }
  const errors = (lines: Proc['lines']) => lines.filter((l) => l.msg === 'request' && (l.error !== undefined || l.incomplete) && !String(l.path).startsWith('/tls-broken'))
  t.same(errors(shop.sidecar.lines.slice(logFrom.shop)), [], "the stable sidecar's access log has no other error or cut-short request")
  t.same(errors(canary.sidecar.lines.slice(logFrom.canary)), [], "the canary sidecar's access log has none at all")
})
