// The pod simulation (`npm run test:e2e`): a network namespace plays the pod. Loopback inside it
// is the pod's loopback; a veth pair on a private /30 of our own is the pod's network. The built
// sidecar and the example app run inside it in native-sidecar order, with the config from
// k8s/base/sidecar.yaml (the ConfigMap), and are reached from outside only through the veth
// address, as the kubelet and the Service would reach them. Needs root and iproute2 (`ip netns`);
// where a namespace cannot be created the test says so and skips.
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { promisify } from 'node:util'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { createCa, issueCertificate } from '../../src/certs/generate.js'

const exec = promisify(execFile)
const root = new URL('../../', import.meta.url).pathname
const id = process.pid % 10_000
const NS = `sidecar-e2e-${id}`
const HOST_IF = `sce${id}h`
const POD_IF = `sce${id}p`
// 10.213.0.0/16 is this test's; each run takes a /30 of it by pid
const octet = id % 250
const HOST_IP = `10.213.${octet}.1`
const POD_IP = `10.213.${octet}.2`

async function ip(...args: string[]): Promise<void> {
  await exec('ip', args)
}

/** Creates the pod's namespace and veth; resolves with why it cannot, or undefined. */
async function createPod(): Promise<string | undefined> {
  try {
    await ip('netns', 'add', NS)
  } catch (err) {
    return `cannot create a network namespace here (needs root and iproute2): ${(err as Error).message.split('\n')[0]}`
  }
  try {
    await ip('link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', POD_IF)
    await ip('link', 'set', POD_IF, 'netns', NS)
    await ip('addr', 'add', `${HOST_IP}/30`, 'dev', HOST_IF)
    await ip('link', 'set', HOST_IF, 'up')
    await ip('netns', 'exec', NS, 'ip', 'addr', 'add', `${POD_IP}/30`, 'dev', POD_IF)
    await ip('netns', 'exec', NS, 'ip', 'link', 'set', POD_IF, 'up')
    await ip('netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up')
  } catch (err) {
    await ip('netns', 'del', NS).catch(() => {}) // the veth goes with it
    throw err
  }
  return undefined
}

interface Proc {
  child: ChildProcess
  lines: Array<Record<string, unknown>>
  exited: Promise<number | null>
}

/** A process inside the pod (`ip netns exec` replaces itself with it: the pid is the process's). */
function inPod(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines: Array<Record<string, unknown>> = []
  let buffered = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const parts = buffered.split('\n')
    buffered = parts.pop()!
    for (const p of parts) if (p.startsWith('{')) lines.push(JSON.parse(p))
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, lines, exited }
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

function get(url: string, opts: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const client = url.startsWith('https:') ? https : http
    const req = client.get(url, { timeout: 5000, ...opts }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, body }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
  })
}

const cannot = await createPod()
t.test('pod simulation: native-sidecar order, TLS through the pod network, Kubernetes stop order', { skip: cannot ?? false }, async (t) => {
  const procs: Proc[] = []
  t.teardown(async () => {
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL')
    await ip('netns', 'del', NS).catch(() => {})
  })

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
  const sidecar = inPod([`${root}dist/main.js`, '--config', `${dir}/config.yaml`])
  procs.push(sidecar)
  const admin = `http://${POD_IP}:9901`
  // the kubelet's startupProbe, from outside the pod
  await waitFor('/started', () => get(`${admin}/started`).then((r) => r.status === 200, () => false))
  const notReady = await get(`${admin}/ready`)
  t.equal(notReady.status, 503, 'ready fails while the app is not there')
  t.match(notReady.body, /backend:app/, 'and says it waits for the app')

  // 2. The app only after /started (the kubelet holds it until the sidecar's startupProbe passes).
  const app = inPod([`${root}examples/app.mjs`], { APP_ADDRESS: '127.0.0.1:8080', STOP_DELAY_MS: '1000' })
  procs.push(app)
  await waitFor('/ready 200', () => get(`${admin}/ready`).then((r) => r.status === 200, () => false))
  t.pass('ready once the app answers its health check')

  // 3. Reached as the Service reaches it: TLS to the pod IP, verified against the CA.
  const tlsOpts = { ca: ca.cert, servername: 'shop' }
  const reply = await get(`https://${POD_IP}:8443/hello`, tlsOpts)
  t.equal(reply.status, 200)
  t.match(JSON.parse(reply.body), { app: 'app', path: '/hello' })
  await t.rejects(
    new Promise((resolve, reject) => {
      const socket = net.connect(8080, POD_IP, () => resolve(socket.end()))
      socket.on('error', reject)
    }),
    { code: 'ECONNREFUSED' },
    'the app is not reachable from outside the pod',
  )
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
