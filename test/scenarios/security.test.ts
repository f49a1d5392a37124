// What the proxy must never give away or need: credentials in its logs (at debug level too) or on
// its admin port, key material in an error, or privileges. The admin port's own rules (loopback
// by default, POST-only and loopback-only stops) are tested in test/admin/server.test.ts and,
// from outside the pod, in test/e2e/pod.e2e.ts.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import t from 'tap'
import { validateConfig } from '../../src/config/load.js'
import { BIN, runBinary, waitForLine } from '../fixtures/binary.js'
import { request } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'

const SECRET = 'S3CRET-7f1c'

t.test('credentials in requests and responses never reach the logs or the admin port, at debug level', async (t) => {
  // At debug level, so that a debug line added later is checked too.
  const level = process.env.SIDECAR_LOG_LEVEL
  process.env.SIDECAR_LOG_LEVEL = 'debug'
  t.teardown(() => (level === undefined ? delete process.env.SIDECAR_LOG_LEVEL : (process.env.SIDECAR_LOG_LEVEL = level)))
  const { up, proxy } = await proxied(
    t,
    fakeUpstream()
      .route('/ok', (_req, res) => res.writeHead(200, { 'set-cookie': `sid=${SECRET}-set-cookie` }).end())
      .route('/fail', (_req, res) => res.writeHead(500, { 'set-cookie': `sid=${SECRET}-set-cookie` }).end())
      .route('/reset', (req) => req.socket.destroy())
      .route('/hang', () => {}),
    { retry: { perTryTimeoutMs: 200 }, limits: { requestTimeoutMs: 500 } },
  )
  const credentials = {
    authorization: `Bearer ${SECRET}-authorization`,
    'proxy-authorization': `Basic ${SECRET}-proxy-authorization`,
    cookie: `session=${SECRET}-cookie`,
    'x-api-key': `${SECRET}-api-key`,
  }
  const outcomes = []
  for (const path of ['/ok', '/fail', '/reset', '/hang']) outcomes.push((await request(`${proxy.url}${path}`, { headers: credentials })).status)
  outcomes.push((await request(`${proxy.url}/big`, { headers: { ...credentials, 'x-pad': 'p'.repeat(20_000) } })).status)
  await new Promise<void>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: proxy.port, path: '/hang', headers: credentials, agent: false })
    req.on('error', () => resolve())
    setTimeout(() => req.destroy(), 50)
  })
  t.same(outcomes, [200, 500, 502, 504, 431], 'answered, failed upstream, reset, timed out, refused; and one client abort')
  t.ok(up.seen.some((s) => s.headers.authorization === credentials.authorization), 'the credentials did reach the app: it is theirs to see')

  for (let i = 0; i < 100 && proxy.logs.filter((l) => l.msg === 'request').length < 5; i++) await new Promise((r) => setTimeout(r, 20))
  const logs = JSON.stringify(proxy.logs)
  const accessLines = proxy.logs.filter((l) => l.msg === 'request').length
  t.ok(accessLines === 5 && proxy.logs.some((l) => l.msg === 'request refused by the parser'), `${proxy.logs.length} log lines: 5 access lines and the refusal`)
  t.notMatch(logs, SECRET, 'no credential in any log line')
  for (const path of ['/config', '/status', '/metrics', '/ready', '/']) {
    t.notMatch((await request(`${proxy.adminUrl}${path}`)).body.toString(), SECRET, `none on the admin port's ${path}`)
  }
})

t.test('key material: in no log line, and a bad key is reported without its contents', async (t) => {
  const { server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key, 'bad.key': `-----BEGIN PRIVATE KEY-----\n${SECRET}\n-----END PRIVATE KEY-----\n` })
  const { proxy } = await proxied(t, fakeUpstream(), { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } })
  // /config itself (the path, never the PEM) is tested in test/admin/server.test.ts.
  const secretLine = server.key.split('\n')[1]!
  t.notMatch(JSON.stringify(proxy.logs), secretLine, 'the served key is in no log line')

  const child = runBinary(['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--tls-cert', `${dir}/tls.crt`, '--tls-key', `${dir}/bad.key`])
  t.equal(await child.exited, 2, 'a bad key: exit 2')
  const output = JSON.stringify(child.lines) + child.stderr()
  t.match(output, 'bad.key', 'the message names the file')
  t.notMatch(output, SECRET, 'and not what is in it')
})

t.test('defaults expose nothing: the admin port binds loopback, only the listener binds all interfaces', async (t) => {
  const defaults = validateConfig({})
  t.equal(defaults.admin.address, '127.0.0.1:9901')
  t.equal(defaults.listener.address, '0.0.0.0:8443', 'an unprivileged port')
})

const notRoot = process.getuid?.() !== 0 && 'not root: dropping privileges needs them (this whole run is unprivileged already)'
t.test('the binary needs no privileges: it serves TLS with every capability dropped', { skip: notRoot }, async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  // As nobody where the checkout is readable to others; else as uid 0 without a single
  // capability, which is what the Kubernetes manifests' `drop: [ALL]` leaves.
  const nobody = ['--reuid=65534', '--regid=65534', '--clear-groups']
  let readable = true
  try {
    execFileSync('setpriv', [...nobody, process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(BIN)})`], { stdio: 'ignore' })
  } catch {
    readable = false
  }
  const identity = readable ? nobody : []
  t.comment(readable ? 'running as uid 65534 with no capabilities' : 'the checkout is not readable by uid 65534: running as uid 0 with no capabilities')
  const child = runBinary(['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url], {}, [
    'setpriv', ...identity, '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
  ])
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
  t.match(status, /^CapEff:\s+0+$/m, 'effective capabilities: none')
  t.match(status, /^CapBnd:\s+0+$/m, 'and none it could regain')
  if (readable) t.match(status, /^Uid:\s+65534\s/m, 'uid 65534')
  const reply = await new Promise<number>((resolve, reject) => {
    const port = new URL(started.listener as string).port
    https.get({ host: '127.0.0.1', port, path: '/', rejectUnauthorized: false }, (res) => resolve(res.statusCode!)).on('error', reject)
  })
  t.equal(reply, 200, 'and forwards over TLS')
  child.kill('SIGTERM')
  t.equal(await child.exited, 0)
})
