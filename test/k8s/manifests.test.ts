// The Kubernetes manifests, rendered by the real `kubectl kustomize` for every overlay: each
// object validates against the Kubernetes schema (kubernetes-models), the sidecar config in the
// ConfigMap passes the proxy's own validation, the probes, Service, ports and grace period agree
// with what the proxy serves, and the Dockerfile and dashboard agree with both.
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { Service } from 'kubernetes-models/v1'
import { ConfigMap } from 'kubernetes-models/v1'
import { Deployment } from 'kubernetes-models/apps/v1'
import { validateConfig } from '../../src/config/load.js'
import { parseAddress, type Config } from '../../src/config/schema.js'
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
  restartPolicy?: string
  ports?: Array<{ name?: string; containerPort: number }>
  startupProbe?: Probe
  readinessProbe?: Probe
  livenessProbe?: Probe
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
  securityContext?: Record<string, unknown>
  volumeMounts?: Array<{ name: string; mountPath: string }>
}
interface Rendered {
  kind: string
  metadata: { name: string; annotations?: Record<string, string> }
  spec?: Record<string, unknown>
  data?: Record<string, string>
}

const MODELS: Record<string, new (o: never) => { validate(): void }> = { Deployment, Service, ConfigMap }

async function render(overlay: string): Promise<Rendered[]> {
  const { stdout } = await run('kubectl', ['kustomize', `${root}k8s/overlays/${overlay}`])
  return parseAllDocuments(stdout).map((d) => d.toJS() as Rendered)
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
      t.ok(Model, `${o.kind} is a kind this test validates`)
      if (Model) t.doesNotThrow(() => new Model(o as never).validate(), `${o.kind}/${o.metadata.name} validates against the Kubernetes schema`)
    }

    const configMap = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'sidecar-config')!
    t.ok(configMap, 'the sidecar ConfigMap, under a fixed name (edits reload live, no restart)')
    let config!: Config
    t.doesNotThrow(() => (config = validateConfig(parseAllDocuments(configMap.data!['config.yaml']!)[0]!.toJS())), 'its config passes sidecar-proxy validate')
    const listenPort = parseAddress(config.listener.address)!.port
    const adminPort = parseAddress(config.admin.address)!.port
    t.equal(parseAddress(config.admin.address)!.host, '0.0.0.0', 'admin on the pod IP: the kubelet probes it there')

    const deployment = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'shop')!
    const pod = (deployment.spec!.template as { metadata: { annotations: Record<string, string> }; spec: Record<string, unknown> }).spec
    const annotations = (deployment.spec!.template as { metadata: { annotations: Record<string, string> } }).metadata.annotations
    const inits = (pod.initContainers ?? []) as Container[]
    const containers = pod.containers as Container[]
    const sidecar = [...inits, ...containers].find((c) => c.name === 'sidecar-proxy')!
    const app = containers.find((c) => c.name === 'app')!
    if (overlay === 'pre-1.29') {
      t.equal(inits.length, 0, 'no init containers before 1.29')
      t.equal(containers[0], sidecar, 'the sidecar is an ordinary container')
      t.equal(sidecar.restartPolicy, undefined, 'without the restartPolicy older API servers reject')
      t.same(app.command!.slice(1, 6), ['/app/dist/main.js', 'await', '--timeout', '60', '--'], 'the app is wrapped with sidecar-proxy await')
    } else {
      t.equal(inits[0], sidecar, 'a native sidecar: the first init container...')
      t.equal(sidecar.restartPolicy, 'Always', '...with restartPolicy Always')
    }
    t.same(sidecar.args, ['--config', '/etc/sidecar/config/config.yaml'])
    t.ok(sidecar.volumeMounts!.some((m) => m.name === 'sidecar-config' && m.mountPath === '/etc/sidecar/config'), 'the config file is where args say')
    t.ok(sidecar.volumeMounts!.some((m) => m.mountPath === '/etc/sidecar/tls' && config.listener.tls && config.listener.tls.certFile === '/etc/sidecar/tls/tls.crt'), 'the TLS Secret is where the config says')
    t.same(
      [sidecar.startupProbe, sidecar.readinessProbe, sidecar.livenessProbe].map((p) => [p?.httpGet.path, p?.httpGet.port]),
      [['/started', adminPort], ['/ready', adminPort], ['/live', adminPort]],
      'probes hit the admin port and the paths it serves',
    )
    t.same(sidecar.ports!.map((p) => p.containerPort).sort(), [listenPort, adminPort].sort(), 'the container declares the ports the config listens on')
    t.equal(app.ports, undefined, 'the app declares no port')
    const appEnv = (app as unknown as { env: Array<{ name: string; value: string }> }).env
    t.equal(appEnv.find((e) => e.name === 'APP_ADDRESS')?.value, new URL(config.backends[0]!.url).host, 'the app listens where the first backend points')

    const grace = pod.terminationGracePeriodSeconds as number
    t.ok(grace * 1000 > config.drain.timeoutMs + 5000, `terminationGracePeriodSeconds ${grace} s leaves room over drain.timeoutMs ${config.drain.timeoutMs} ms`)
    const podSecurity = pod.securityContext as Record<string, unknown>
    t.equal(podSecurity.runAsNonRoot, true)
    for (const c of [sidecar, app]) {
      t.match(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, `${c.name}: no privileges`)
      t.ok(c.resources?.requests?.cpu && c.resources.requests.memory && c.resources.limits?.memory, `${c.name}: requests and a memory limit`)
    }
    t.match(annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(adminPort), 'prometheus.io/path': '/metrics' })

    const service = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop')!
    const ports = service.spec!.ports as Array<{ port: number; targetPort: number }>
    t.same(ports.map((p) => [p.port, p.targetPort]), [[443, listenPort]], 'the Service exposes 443 to the sidecar and nothing else')

    if (overlay === 'canary') {
      t.same(config.backends.map((b) => [b.name, b.weight, b.gatesReadiness]), [['app', 90, true], ['canary', 10, false]], '90/10, the remote canary does not gate readiness')
      const canaryService = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop-canary')!
      const port = (canaryService.spec!.ports as Array<{ port: number }>)[0]!.port
      t.equal(config.backends[1]!.url, `http://shop-canary:${port}`, 'the canary backend is the canary Service')
    }
  })
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
