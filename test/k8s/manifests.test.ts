// The Kubernetes manifests, rendered by the real `kubectl kustomize` for every overlay: each
// object validates against the Kubernetes schema (kubernetes-models; cert-manager's by shape),
// each Deployment's sidecar config, in its own ConfigMap, passes the proxy's own validation, the
// probes, Services, ports, images and grace period agree with what the proxy serves, the canary is
// reached over mTLS with certificates that fit each other, and the Dockerfile and dashboard agree
// with all of it.
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { Service } from 'kubernetes-models/v1'
import { ConfigMap } from 'kubernetes-models/v1'
import { Deployment } from 'kubernetes-models/apps/v1'
import { validateConfig } from '../../src/config/load.js'
import { isLoopbackUrl, type Config } from '../../src/config/schema.js'
import { parseAddress } from '../../src/config/settings.js'
import { createMetrics } from '../../src/metrics.js'

const run = promisify(execFile)
const root = new URL('../../', import.meta.url).pathname
const overlays = readdirSync(`${root}k8s/overlays`)

interface Probe {
  httpGet: { path: string; port: number | string }
}
interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  env?: Array<{ name: string; value: string }>
  restartPolicy?: string
  ports?: Array<{ name?: string; containerPort: number }>
  startupProbe?: Probe
  readinessProbe?: Probe
  livenessProbe?: Probe
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
  securityContext?: Record<string, unknown>
  volumeMounts?: Array<{ name: string; mountPath: string }>
}
interface Volume {
  name: string
  configMap?: { name: string }
  secret?: { secretName: string }
}
interface PodTemplate {
  metadata: { labels: Record<string, string>; annotations?: Record<string, string> }
  spec: {
    initContainers?: Container[]
    containers: Container[]
    volumes?: Volume[]
    terminationGracePeriodSeconds?: number
    securityContext?: Record<string, unknown>
  }
}
interface Rendered {
  apiVersion: string
  kind: string
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  spec?: Record<string, unknown>
  data?: Record<string, string>
}
/** cert-manager's objects: no kubernetes-models for them, so their shape is checked here. */
interface Certificate extends Rendered {
  spec: {
    secretName: string
    isCA?: boolean
    commonName?: string
    dnsNames?: string[]
    usages?: string[]
    duration?: string
    renewBefore?: string
    issuerRef: { name: string; kind?: string; group?: string }
  }
}
interface Issuer extends Rendered {
  spec: { selfSigned?: Record<string, never>; ca?: { secretName: string } }
}
/** backends[].tls, read without depending on the Config type having it. */
interface BackendTls {
  caFile?: string
  certFile?: string
  keyFile?: string
  serverName?: string
}
const backendTls = (b: object): BackendTls | undefined => Reflect.get(b, 'tls') as BackendTls | undefined

const MODELS: Record<string, new (o: never) => { validate(): void }> = { Deployment, Service, ConfigMap }
const CERT_MANAGER_KINDS = new Set(['Issuer', 'Certificate'])
// cert-manager's KeyUsage values (certificates.cert-manager.io/v1)
const USAGES = new Set(['signing', 'digital signature', 'content commitment', 'key encipherment', 'key agreement', 'data encipherment', 'cert sign', 'crl sign', 'encipher only', 'decipher only', 'any', 'server auth', 'client auth', 'code signing', 'email protection', 's/mime', 'ipsec end system', 'ipsec tunnel', 'ipsec user', 'timestamping', 'ocsp signing', 'microsoft sgc', 'netscape sgc'])

// The one image reference every container must get through the base's `images:` entry.
const baseImages = (parse(readFileSync(`${root}k8s/base/kustomization.yaml`, 'utf8')) as { images: Array<{ name: string; newName: string; newTag: string }> }).images
const sidecarImage = baseImages.find((i) => i.name === 'sidecar-proxy')!
const IMAGE = `${sidecarImage.newName}:${sidecarImage.newTag}`

async function render(overlay: string): Promise<Rendered[]> {
  const { stdout } = await run('kubectl', ['kustomize', `${root}k8s/overlays/${overlay}`])
  return parseAllDocuments(stdout).map((d) => d.toJS() as Rendered)
}

const hours = (d: string): number => Number(/^(\d+)h$/.exec(d)?.[1] ?? NaN)
const isUnder = (file: string, dir: string): boolean => file.startsWith(dir.endsWith('/') ? dir : `${dir}/`)
const selects = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v)

/** One rendered Deployment, its sidecar and the config its sidecar reads. */
interface Pod {
  name: string
  template: PodTemplate
  sidecar: Container
  app: Container
  config: Config
  /** The Secret a file the sidecar reads comes from, if it lies under a Secret's mount. */
  secretOf(file: string): string | undefined
}

t.test('kubectl with a kustomize that understands these manifests is installed', async (t) => {
  const { stdout } = await run('kubectl', ['version', '--client', '--output=json'])
  const version = (JSON.parse(stdout) as { kustomizeVersion?: string }).kustomizeVersion ?? 'none'
  t.ok(Number(/^v(\d+)/.exec(version)?.[1]) >= 4, `kustomize ${version} (v4 or later: resources may name directories)`)
})

for (const overlay of overlays) {
  t.test(`overlay ${overlay}: valid objects that fit the proxy`, async (t) => {
    const objects = await render(overlay)
    t.ok(objects.length >= 3, `${objects.length} objects rendered`)
    for (const o of objects) {
      const Model = MODELS[o.kind]
      t.ok(Model || CERT_MANAGER_KINDS.has(o.kind), `${o.kind} is a kind this test validates`)
      if (Model) t.doesNotThrow(() => new Model(o as never).validate(), `${o.kind}/${o.metadata.name} validates against the Kubernetes schema`)
    }
    const certificates = objects.filter((o): o is Certificate => o.kind === 'Certificate')
    const issuers = objects.filter((o): o is Issuer => o.kind === 'Issuer')
    checkCertManager(t, certificates, issuers)

    // Every Deployment: its sidecar, its own config, and the pod around them.
    const deployments = objects.filter((o) => o.kind === 'Deployment')
    t.ok(deployments.some((d) => d.metadata.name === 'shop'), 'the Deployment "shop"')
    const pods: Pod[] = []
    for (const deployment of deployments) {
      const name = deployment.metadata.name
      const template = deployment.spec!.template as PodTemplate
      const pod = template.spec
      const inits = pod.initContainers ?? []
      const containers = pod.containers
      const sidecar = [...inits, ...containers].find((c) => c.name === 'sidecar-proxy')!
      const app = containers.find((c) => c.name === 'app')!
      t.ok(sidecar && app, `${name}: a sidecar and an app`)
      const volumes = pod.volumes ?? []
      const volumeAt = (dir: string) => volumes.find((v) => v.name === sidecar.volumeMounts?.find((m) => m.mountPath === dir)?.name)

      for (const c of [...inits, ...containers]) t.equal(c.image, IMAGE, `${name}/${c.name}: the image is the base's images: entry (${IMAGE})`)

      // The config: the ConfigMap mounted where args say, under a fixed name.
      t.same(sidecar.args, ['--config', '/etc/sidecar/config/config.yaml'], `${name}: the sidecar reads /etc/sidecar/config/config.yaml`)
      const configMapName = volumeAt('/etc/sidecar/config')?.configMap?.name
      t.equal(configMapName, name.replace(/^shop/, 'sidecar-config'), `${name}: its own ConfigMap, under a fixed name (edits reload live, no restart)`)
      const configMap = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === configMapName)!
      t.ok(configMap, `${name}: the ConfigMap ${configMapName} is rendered`)
      let config!: Config
      t.doesNotThrow(() => (config = validateConfig(parseAllDocuments(configMap.data!['config.yaml']!)[0]!.toJS())), `${configMapName}: its config passes sidecar-proxy validate`)
      if (!config) continue
      const listenPort = parseAddress(config.listener.address)!.port
      const adminPort = parseAddress(config.admin.address)!.port
      t.equal(parseAddress(config.admin.address)!.host, '0.0.0.0', `${name}: admin on the pod IP: the kubelet probes it there`)

      if (overlay === 'pre-1.29') {
        t.equal(inits.length, 0, 'no init containers before 1.29')
        t.equal(containers[0], sidecar, 'the sidecar is an ordinary container')
        t.equal(sidecar.restartPolicy, undefined, 'without the restartPolicy older API servers reject')
        t.same(app.command!.slice(1, 6), ['/app/dist/main.js', 'await', '--timeout', '60', '--'], 'the app is wrapped with sidecar-proxy await')
      } else {
        t.equal(inits[0], sidecar, `${name}: a native sidecar: the first init container...`)
        t.equal(sidecar.restartPolicy, 'Always', '...with restartPolicy Always')
      }

      // Files the sidecar reads: each from a Secret mounted in the sidecar.
      const secretOf = (file: string): string | undefined => {
        const mount = sidecar.volumeMounts?.find((m) => isUnder(file, m.mountPath))
        return volumes.find((v) => v.name === mount?.name)?.secret?.secretName
      }
      const listenerTls = config.listener.tls
      t.ok(listenerTls && listenerTls.certFile && listenerTls.keyFile, `${name}: the listener serves a certificate from files`)
      if (listenerTls) {
        for (const file of [listenerTls.certFile, listenerTls.keyFile, listenerTls.clientCaFile]) {
          if (file !== undefined) t.ok(secretOf(file), `${name}: ${file} is in a Secret mounted in the sidecar`)
        }
      }
      for (const b of config.backends) {
        const tls = backendTls(b)
        for (const file of [tls?.caFile, tls?.certFile, tls?.keyFile]) {
          if (file !== undefined) t.ok(secretOf(file), `${name}: backend ${b.name}'s ${file} is in a Secret mounted in the sidecar`)
        }
      }

      t.same(
        [sidecar.startupProbe, sidecar.readinessProbe, sidecar.livenessProbe].map((p) => [p?.httpGet.path, p?.httpGet.port]),
        [['/started', adminPort], ['/ready', adminPort], ['/live', adminPort]],
        `${name}: probes hit the admin port and the paths it serves`,
      )
      t.same(sidecar.ports!.map((p) => p.containerPort).sort(), [listenPort, adminPort].sort(), `${name}: the sidecar declares the ports its config listens on`)
      t.equal(app.ports, undefined, `${name}: the app declares no port`)
      const appAddress = app.env?.find((e) => e.name === 'APP_ADDRESS')?.value
      t.equal(appAddress, new URL(config.backends[0]!.url).host, `${name}: the app listens where the first backend points`)
      t.ok(appAddress && isLoopbackUrl(`http://${appAddress}`), `${name}: the app listens on loopback only (${appAddress})`)

      const grace = pod.terminationGracePeriodSeconds!
      t.ok(grace * 1000 > config.drain.timeoutMs + 5000, `${name}: terminationGracePeriodSeconds ${grace} s leaves room over drain.timeoutMs ${config.drain.timeoutMs} ms`)
      t.equal(pod.securityContext?.runAsNonRoot, true, `${name}: runAsNonRoot`)
      for (const c of [sidecar, app]) {
        t.match(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, `${name}/${c.name}: no privileges`)
        t.ok(c.resources?.requests?.cpu && c.resources.requests.memory && c.resources.limits?.memory, `${name}/${c.name}: requests and a memory limit`)
      }
      t.match(template.metadata.annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(adminPort), 'prometheus.io/path': '/metrics' }, `${name}: scraped on the admin port`)
      pods.push({ name, template, sidecar, app, config, secretOf })
    }

    // Every Service leads to exactly one Deployment's pods, on their sidecar's listener port.
    const services = objects.filter((o) => o.kind === 'Service')
    for (const service of services) {
      const selector = service.spec!.selector as Record<string, string>
      const ports = service.spec!.ports as Array<{ port: number; targetPort: number | string }>
      const selected = pods.filter((p) => selects(selector, p.template.metadata.labels))
      t.equal(selected.length, 1, `Service ${service.metadata.name} selects the pods of one Deployment (${selected.map((p) => p.name).join(', ')})`)
      const to = selected[0]
      if (!to) continue
      const listenPort = parseAddress(to.config.listener.address)!.port
      t.same(ports.map((p) => p.targetPort), [listenPort], `Service ${service.metadata.name} targets ${to.name}'s sidecar listener (${listenPort}) and nothing else`)
    }
    const service = services.find((o) => o.metadata.name === 'shop')!
    const shop = pods.find((p) => p.name === 'shop')
    t.same(
      (service.spec!.ports as Array<{ port: number; targetPort: number }>).map((p) => [p.port, p.targetPort]),
      [[443, shop && parseAddress(shop.config.listener.address)!.port]],
      'the Service "shop" exposes 443 to the sidecar and nothing else',
    )

    if (overlay === 'canary') checkCanary(t, { objects, pods, certificates })
  })
}

/** cert-manager objects by shape: issuers that exist, a CA that is one, usages that are. */
function checkCertManager(t: Test, certificates: Certificate[], issuers: Issuer[]): void {
  for (const o of [...certificates, ...issuers]) t.equal(o.apiVersion, 'cert-manager.io/v1', `${o.kind}/${o.metadata.name}: cert-manager.io/v1`)
  for (const issuer of issuers) {
    const types = Object.keys(issuer.spec ?? {})
    t.ok(types.length === 1 && ['selfSigned', 'ca'].includes(types[0]!), `Issuer/${issuer.metadata.name}: one issuer type (${types.join(', ')})`)
    if (issuer.spec.ca) {
      const ca = certificates.find((c) => c.spec.secretName === issuer.spec.ca!.secretName)
      t.ok(ca?.spec.isCA, `Issuer/${issuer.metadata.name}: its Secret ${issuer.spec.ca.secretName} is written by a CA Certificate`)
    }
  }
  for (const cert of certificates) {
    const { spec } = cert
    const name = `Certificate/${cert.metadata.name}`
    t.ok(typeof spec.secretName === 'string' && spec.secretName.length > 0, `${name}: a secretName`)
    const issuer = issuers.find((i) => i.metadata.name === spec.issuerRef?.name)
    t.ok(issuer, `${name}: issuerRef names an Issuer of the overlay (${spec.issuerRef?.name})`)
    t.equal(spec.issuerRef?.kind ?? 'Issuer', 'Issuer', `${name}: issuerRef.kind Issuer`)
    t.equal(spec.issuerRef?.group ?? 'cert-manager.io', 'cert-manager.io', `${name}: issuerRef.group cert-manager.io`)
    t.ok(spec.commonName || spec.dnsNames?.length, `${name}: a subject (commonName or dnsNames)`)
    if (spec.isCA) {
      t.ok(issuer?.spec.selfSigned, `${name}: the CA is signed by the self-signed Issuer`)
    } else {
      t.ok(spec.usages?.length, `${name}: says what it is for (usages)`)
      t.ok(issuer?.spec.ca, `${name}: issued by a CA Issuer`)
    }
    for (const u of spec.usages ?? []) t.ok(USAGES.has(u), `${name}: "${u}" is a cert-manager usage`)
    if (spec.duration !== undefined && spec.renewBefore !== undefined) {
      t.ok(hours(spec.renewBefore) < hours(spec.duration), `${name}: renewed (${spec.renewBefore}) before it expires (${spec.duration})`)
    }
  }
}

/**
 * The canary overlay: the stable sidecars reach the canary's sidecar (never its app) over mTLS,
 * with certificates from one CA, and the canary pods are the stable pod under other names.
 */
function checkCanary(t: Test, { objects, pods, certificates }: { objects: Rendered[]; pods: Pod[]; certificates: Certificate[] }): void {
  const stable = pods.find((p) => p.name === 'shop')
  const canary = pods.find((p) => p.name === 'shop-canary')
  t.ok(stable && canary, 'the Deployments "shop" and "shop-canary", with valid configs')
  if (!stable || !canary) return
  const { config } = stable
  t.same(config.backends.map((b) => [b.name, b.weight, b.gatesReadiness]), [['app', 90, true], ['canary', 10, false]], '90/10, the remote canary does not gate readiness')
  const certificateFor = (secret: string | undefined) => certificates.find((c) => c.spec.secretName === secret)

  // stable sidecar -> https -> the Service "shop-canary"
  const backend = config.backends[1]!
  const canaryService = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop-canary')!
  const servicePort = (canaryService.spec!.ports as Array<{ port: number }>)[0]!.port
  const url = new URL(backend.url)
  t.equal(url.protocol, 'https:', 'the canary is reached over TLS')
  t.equal(url.hostname, 'shop-canary', 'the canary backend is the canary Service...')
  t.equal(Number(url.port || 443), servicePort, '...on its port')
  t.ok(selects(canaryService.spec!.selector as Record<string, string>, canary.template.metadata.labels), 'the Service leads to the canary pods')

  // ...presenting a client certificate, verifying the canary's with the mesh CA
  const tls = backendTls(backend)
  t.ok(tls?.caFile && tls.certFile && tls.keyFile, 'the canary backend has tls.caFile, certFile and keyFile')
  if (!tls?.caFile || !tls.certFile || !tls.keyFile) return
  const clientSecret = stable.secretOf(tls.certFile)
  t.same([stable.secretOf(tls.keyFile), stable.secretOf(tls.caFile)], [clientSecret, clientSecret], 'the client certificate, its key and the CA come from one Secret...')
  const clientCert = certificateFor(clientSecret)
  t.ok(clientCert, `...written by a Certificate (${clientSecret})...`)
  t.ok(clientCert?.spec.usages?.includes('client auth'), '...for client auth')
  t.same([tls.certFile, tls.keyFile, tls.caFile].map((f) => basename(f)), ['tls.crt', 'tls.key', 'ca.crt'], "the files under the names cert-manager's Secrets use")

  // the canary's sidecar: its own certificate, and only clients with one from the same CA
  const listener = canary.config.listener.tls
  t.ok(listener, 'the canary sidecar serves TLS')
  if (!listener) return
  t.ok(listener.clientCaFile, 'the canary sidecar verifies client certificates (clientCaFile)...')
  t.equal(listener.requireClientCert, true, '...and requires one')
  const serverSecret = canary.secretOf(listener.certFile!)
  t.equal(canary.secretOf(listener.clientCaFile!), serverSecret, 'its CA file is in its certificate Secret')
  t.equal(basename(listener.clientCaFile!), 'ca.crt', "under the name cert-manager's Secrets use")
  const serverCert = certificateFor(serverSecret)
  t.ok(serverCert, `its certificate Secret is written by a Certificate (${serverSecret})...`)
  t.ok(serverCert?.spec.usages?.includes('server auth'), '...for server auth...')
  t.equal(serverCert?.spec.issuerRef.name, clientCert?.spec.issuerRef.name, '...from the CA Issuer that signs the stable pods\' client certificate')
  const verified = tls.serverName ?? url.hostname
  t.ok(serverCert?.spec.dnsNames?.includes(verified), `the canary's certificate carries the name the stable sidecars verify (${verified})`)
  const stableListener = stable.config.listener.tls
  t.not(serverSecret, stableListener && stable.secretOf(stableListener.certFile!), 'the canary has a certificate of its own')

  // the same pod as the stable one, under other names
  t.same(canary.template.spec.initContainers!.map((c) => c.name), stable.template.spec.initContainers!.map((c) => c.name), 'the canary pod has the stable pod\'s init containers...')
  t.same(canary.template.spec.containers.map((c) => c.name), stable.template.spec.containers.map((c) => c.name), '...and containers')
  t.equal(canary.app.env?.find((e) => e.name === 'APP_NAME')?.value, 'canary', 'the canary app answers as "canary"')
  t.equal(canary.config.backends.length, 1, 'the canary sidecar has one backend: its own app')
}
t.test('the Dockerfile exposes the default ports and runs the CLI from the built dist/', async (t) => {
  const dockerfile = readFileSync(`${root}Dockerfile`, 'utf8')
  const defaults = validateConfig({})
  const expose = /^EXPOSE (.+)$/m.exec(dockerfile)![1]!.split(' ').map(Number)
  t.same(expose, [parseAddress(defaults.listener.address)!.port, parseAddress(defaults.admin.address)!.port])
  t.match(dockerfile, /^RUN npm ci /m, 'built with the same npm ci as CI')
  t.match(dockerfile, /^USER 65532:65532$/m, 'non-root, the uid the manifests run as')
  t.match(dockerfile, /^ENTRYPOINT \["\/nodejs\/bin\/node", "\/app\/dist\/main\.js"\]$/m)
  t.ok(readFileSync(`${root}package.json`, 'utf8').includes('"prepare": "tsc -p ."'), 'npm ci builds dist/ through prepare')
})

t.test('the Grafana dashboard queries only metrics the proxy has, and shows every one', async (t) => {
  const dashboard = JSON.parse(readFileSync(`${root}k8s/dashboards/sidecar-proxy.json`, 'utf8')) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> }
  const defined = new Set((await createMetrics().registry.getMetricsAsJSON()).map((m) => m.name).filter((n) => n.startsWith('sidecar_')))
  const used = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((q) => [...q.expr.matchAll(/\bsidecar_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')))))
  for (const name of used) t.ok(defined.has(name), `${name} exists`)
  for (const name of defined) t.ok(used.has(name), `${name} is on the dashboard`)
})
