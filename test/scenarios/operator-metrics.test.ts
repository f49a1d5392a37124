// The metrics an operator of Envoy or Linkerd looks for, each moved by the traffic that should
// move it, through a real proxy on loopback with real TLS, real clients (Node's https and http2,
// the openssl command) and the exposition checked by Prometheus' own promtool.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http2 from 'node:http2'
import https from 'node:https'
import net from 'node:net'
import tls from 'node:tls'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { json, request, until } from '../fixtures/client.js'
import { fakeCollector } from '../fixtures/collector.js'
import { opensslCa, opensslIssue } from '../fixtures/openssl.js'
import { proxied, type RunningProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'
import type { HandshakeFailure } from '../../src/metrics.js'

const { ca, server } = devCerts()

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-metrics-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A TLS proxy in front of a fake app; `tls` adds listener.tls keys (clientCaFile...). */
async function tlsProxy(t: Test, tls: Record<string, unknown> = {}, app = fakeUpstream()) {
  const dir = tempDir(t)
  writeFileSync(join(dir, 'tls.crt'), server.cert)
  writeFileSync(join(dir, 'tls.key'), server.key)
  // handshake failures are logged at debug: a scanner makes hundreds
  return proxied(t, app, { listener: { tls: { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key'), ...tls } }, log: { level: 'debug' } })
}

/** Every sample of the scrape, by its name and labels as written (`name{a="b"}`). */
async function scrape(proxy: RunningProxy): Promise<Map<string, number>> {
  const text = (await request(`${proxy.adminUrl}/metrics`)).body.toString()
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    samples.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return samples
}

const value = async (proxy: RunningProxy, sample: string) => (await scrape(proxy)).get(sample) ?? 0

/** Runs `openssl s_client` (asynchronously: the proxy shares this event loop); its output. */
function sClient(port: number, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], { encoding: 'utf8', timeout: 10_000 }, (_err, stdout, stderr) => resolve(`${stdout}\n${stderr}`))
    child.stdin?.end()
  })
}

/** `bytes` on a raw TCP connection, held `ms`, then closed. */
function rawConnection(port: number, bytes: string | Buffer, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      if (bytes.length > 0) socket.write(bytes)
      setTimeout(() => socket.destroy(), ms)
    })
    socket.on('error', () => {})
    socket.on('close', () => resolve())
  })
}

function h2Get(port: number, path: string): Promise<{ session: http2.ClientHttp2Session; status: number }> {
  const session = http2.connect(`https://127.0.0.1:${port}`, { ca: ca.cert })
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': path })
    stream.on('response', (headers) => stream.resume().on('end', () => resolve({ session, status: Number(headers[':status']) })))
    stream.on('error', reject)
  })
}

t.test('client connections: opened and closed by protocol and TLS version, their wire bytes, the requests in flight', async (t) => {
  let release: (() => void) | undefined
  const { proxy } = await tlsProxy(
    t,
    {},
    fakeUpstream().route('/held', (_req, res) => {
      release = () => res.end('done')
    }),
  )
  const opened = (protocol: string, tls: string) => value(proxy, `sidecar_connections_opened_total{protocol="${protocol}",tls="${tls}"}`)
  const closed = (protocol: string, tls: string) => value(proxy, `sidecar_connections_closed_total{protocol="${protocol}",tls="${tls}"}`)

  const h1 = new https.Agent({ ca: ca.cert, keepAlive: true })
  const tls12 = new https.Agent({ ca: ca.cert, keepAlive: true, maxVersion: 'TLSv1.2' })
  const body = Buffer.alloc(100_000, 'x')
  const before = await scrape(proxy)
  t.equal((await request(`https://127.0.0.1:${proxy.port}/up`, { agent: h1, method: 'POST', body })).status, 200)
  t.equal((await request(`https://127.0.0.1:${proxy.port}/`, { agent: tls12 })).status, 200)
  const h2 = await h2Get(proxy.port, '/')
  t.equal(h2.status, 200)
  t.equal(await opened('http1', 'TLSv1.3'), 1, 'an HTTP/1.1 connection over TLS 1.3')
  t.equal(await opened('http1', 'TLSv1.2'), 1, 'one over TLS 1.2')
  t.equal(await opened('http2', 'TLSv1.3'), 1, 'an HTTP/2 connection')
  t.equal(await closed('http1', 'TLSv1.3'), 0, 'none closed yet')

  const after = await scrape(proxy)
  const received = after.get('sidecar_connection_received_bytes_total')! - (before.get('sidecar_connection_received_bytes_total') ?? 0)
  const sent = after.get('sidecar_connection_sent_bytes_total')! - (before.get('sidecar_connection_sent_bytes_total') ?? 0)
  t.ok(received > body.length && received < body.length * 1.2, `the uploaded body and the handshakes on the wire, counted while the connections are open (${received} bytes)`)
  t.ok(sent > 1000 && sent < body.length, `the answers and the certificate sent (${sent} bytes)`)

  // a request held by the app is in flight until it is answered
  t.equal(await value(proxy, 'sidecar_requests_in_flight'), 0)
  const held = request(`https://127.0.0.1:${proxy.port}/held`, { agent: h1 })
  await until(() => release !== undefined)
  t.equal(await value(proxy, 'sidecar_requests_in_flight'), 1, 'one request held by the app')
  release!()
  t.equal((await held).status, 200)
  for (let i = 0; i < 100 && (await value(proxy, 'sidecar_requests_in_flight')) > 0; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(await value(proxy, 'sidecar_requests_in_flight'), 0, 'none once answered')

  h1.destroy()
  tls12.destroy()
  h2.session.close()
  for (let i = 0; i < 100 && (await closed('http1', 'TLSv1.3')) + (await closed('http2', 'TLSv1.3')) + (await closed('http1', 'TLSv1.2')) < 3; i++) await new Promise((r) => setTimeout(r, 20))
  t.equal(await closed('http1', 'TLSv1.3'), 1, 'closed: the HTTP/1.1 connection')
  t.equal(await closed('http1', 'TLSv1.2'), 1, 'the TLS 1.2 one')
  t.equal(await closed('http2', 'TLSv1.3'), 1, 'the HTTP/2 one')
  const closedBytes = (await scrape(proxy)).get('sidecar_connection_received_bytes_total')!
  t.ok(closedBytes >= after.get('sidecar_connection_received_bytes_total')!, 'bytes of closed connections stay counted')
})

t.test('the plain port: connections by protocol with tls="none"', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  t.equal((await request(`${proxy.url}/`)).status, 200)
  const session = http2.connect(proxy.url)
  t.teardown(() => session.close())
  await new Promise<void>((resolve, reject) => session.request({ ':path': '/' }).on('response', () => resolve()).on('error', reject).resume())
  t.equal(await value(proxy, 'sidecar_connections_opened_total{protocol="http1",tls="none"}'), 1)
  t.equal(await value(proxy, 'sidecar_connections_opened_total{protocol="http2",tls="none"}'), 1, 'HTTP/2 with prior knowledge (h2c)')
})

t.test('failed TLS handshakes: counted by what went wrong, logged as a handshake failure, never as a bad request', async (t) => {
  const { proxy } = await tlsProxy(t, { handshakeTimeoutMs: 300 })
  const failures = (reason: HandshakeFailure) => value(proxy, `sidecar_tls_handshake_failures_total{reason="${reason}"}`)
  const stranger = opensslCa('a CA the client trusts instead')
  const strangerCa = join(tempDir(t), 'ca.crt')
  writeFileSync(strangerCa, stranger.cert)

  await rawConnection(proxy.port, 'GET / HTTP/1.1\r\nHost: shop\r\n\r\n', 200)
  await sClient(proxy.port, ['-tls1_1'])
  await sClient(proxy.port, ['-tls1_2', '-cipher', 'AES256-SHA'])
  await sClient(proxy.port, ['-verify_return_error', '-CAfile', strangerCa])
  await rawConnection(proxy.port, '', 1000) // says nothing: the handshake times out
  await rawConnection(proxy.port, Buffer.from('160301020000', 'hex'), 100) // half a ClientHello, then gone
  const expected: Array<[HandshakeFailure, string]> = [
    ['not_tls', 'plain HTTP to the TLS port'],
    ['protocol_version', 'TLS 1.1'],
    ['no_shared_cipher', 'a cipher outside the policy'],
    ['client_rejected_certificate', 'a client that does not trust the served certificate'],
    ['timeout', 'a client that sends nothing'],
    ['closed', 'a client gone mid-handshake'],
  ]
  await until(() => proxy.logs.filter((l) => l.msg === 'TLS handshake failed').length >= expected.length, 3000)
  for (const [reason, what] of expected) t.equal(await failures(reason), 1, `${what}: ${reason}`)
  t.same(
    proxy.logs.filter((l) => l.msg === 'TLS handshake failed').map((l) => l.reason),
    expected.map(([reason]) => reason),
    'each logged with its reason',
  )
  t.same(proxy.logs.filter((l) => l.error === 'bad_request'), [], 'none taken for a bad request')
  t.equal(await value(proxy, 'sidecar_connections_opened_total{protocol="http1",tls="TLSv1.3"}'), 0, 'none counted as an opened HTTP connection')
})

t.test('mutual TLS: a client without a certificate, and one whose certificate the CA did not sign', async (t) => {
  const mesh = opensslCa('mesh CA')
  const dir = tempDir(t)
  writeFileSync(join(dir, 'ca.crt'), mesh.cert)
  const { proxy } = await tlsProxy(t, { clientCaFile: join(dir, 'ca.crt'), requireClientCert: true })
  const outsider = opensslIssue(opensslCa('another CA'), { commonName: 'outsider', names: ['outsider'], usage: 'client' })
  const member = opensslIssue(mesh, { commonName: 'member', names: ['member'], usage: 'client' })
  for (const [name, pem] of Object.entries({ outsider, member })) {
    writeFileSync(join(dir, `${name}.crt`), pem.cert)
    writeFileSync(join(dir, `${name}.key`), pem.key)
  }
  await sClient(proxy.port, ['-tls1_2'])
  await sClient(proxy.port, ['-cert', join(dir, 'outsider.crt'), '-key', join(dir, 'outsider.key')])
  const member13 = await sClient(proxy.port, ['-cert', join(dir, 'member.crt'), '-key', join(dir, 'member.key')])
  t.match(member13, /New, TLSv1.3/, 'a member of the mesh gets in')
  await until(() => proxy.logs.filter((l) => l.msg === 'TLS handshake failed').length >= 2, 3000)
  t.equal(await value(proxy, 'sidecar_tls_handshake_failures_total{reason="client_certificate_required"}'), 1)
  t.equal(await value(proxy, 'sidecar_tls_handshake_failures_total{reason="client_certificate_invalid"}'), 1)
  t.equal(await value(proxy, 'sidecar_tls_handshake_failures_total{reason="closed"}'), 0, 'no failure taken for another')
})

t.test('upstream attempts: a latency histogram per backend beside the request one', async (t) => {
  const { proxy } = await proxied(
    t,
    fakeUpstream().route('/slow', (_req, res) => void setTimeout(() => res.end('late'), 150)),
  )
  t.equal((await request(`${proxy.url}/fast`)).status, 200)
  t.equal((await request(`${proxy.url}/slow`)).status, 200)
  const samples = await scrape(proxy)
  t.equal(samples.get('sidecar_upstream_attempt_duration_seconds_count{backend="app"}'), 2, 'one observation per attempt')
  t.equal(samples.get('sidecar_upstream_attempt_duration_seconds_bucket{le="0.1",backend="app"}'), 1, 'the fast one within 100 ms')
  t.equal(samples.get('sidecar_upstream_attempt_duration_seconds_bucket{le="0.25",backend="app"}'), 2, 'the slow one past it')
  t.ok(samples.get('sidecar_upstream_attempt_duration_seconds_sum{backend="app"}')! >= 0.15)
})

t.test('build, config and readiness facts', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  const samples = await scrape(proxy)
  t.equal(samples.get(`sidecar_build_info{version="${pkg.version}",node_version="${process.version}"}`), 1)
  t.equal(samples.get(`sidecar_config_info{version="${proxy.app.config().version}"}`), 1)
  t.equal(samples.get('sidecar_config_last_reload_successful'), 1)
  t.ok(Math.abs(samples.get('sidecar_config_last_reload_success_timestamp_seconds')! - Date.now() / 1000) < 60, 'loaded at start')
  t.equal(samples.get('sidecar_ready'), 1, 'ready: the listener is bound, the app answers')
  proxy.app.readiness.hold('test', 'held by the test')
  t.equal(await value(proxy, 'sidecar_ready'), 0, 'a latch held: not ready')
  proxy.app.readiness.release('test')
})

/** Why `command` cannot run here, or undefined if it can. promtool and prometheus come with
 *  Debian's prometheus package, which CI installs (.ci/run). */
function missing(command: string, what: string): string | undefined {
  try {
    execFileSync(command, ['--version'], { stdio: 'ignore' })
    return undefined
  } catch {
    return `${command} is not installed here (apt-get install prometheus): ${what}`
  }
}

const noPromtool = missing('promtool', 'the exposition is not linted')

if (noPromtool && process.env.CI) t.fail(`${noPromtool}; CI must lint the exposition`)
else t.test('promtool check metrics: the scrape after traffic passes Prometheus\' own linter', { skip: noPromtool ?? false }, async (t) => {
  const { proxy } = await tlsProxy(t, {}, fakeUpstream().seq('/flaky', 503, 200))
  const agent = new https.Agent({ ca: ca.cert })
  await request(`https://127.0.0.1:${proxy.port}/flaky`, { agent })
  await request(`https://127.0.0.1:${proxy.port}/`, { agent })
  ;(await h2Get(proxy.port, '/')).session.close()
  await rawConnection(proxy.port, 'GET / HTTP/1.1\r\n\r\n', 100)
  const text = (await request(`${proxy.adminUrl}/metrics`)).body.toString()
  const lint = await new Promise<{ code: number; output: string }>((resolve) => {
    const child = execFile('promtool', ['check', 'metrics'], { encoding: 'utf8' }, (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, output: stdout + stderr }))
    child.stdin!.end(text)
  })
  t.equal(lint.output.trim(), '', 'nothing to report')
  t.equal(lint.code, 0)
  t.match(text, /^sidecar_tls_handshake_failures_total\{reason="not_tls"\} 1$/m, 'the scrape had the new series in it')
})

const OPENMETRICS = 'application/openmetrics-text; version=1.0.0; charset=utf-8'

/** A proxy with every request traced (sampled), exporting to a fake collector. */
async function tracedProxy(t: Test, app = fakeUpstream()) {
  const collector = await fakeCollector()
  t.teardown(() => collector.close())
  return proxied(t, app, { tracing: { sampleRatio: 1, otlp: { endpoint: collector.url } } })
}

t.test('OpenMetrics when the scraper asks: exemplars with the trace of sampled requests on both latency histograms', async (t) => {
  const { proxy } = await tracedProxy(t)
  const id = (await request(`${proxy.url}/traced`)).headers['x-request-id'] as string
  const line = await proxy.accessLine(id)
  const om = await request(`${proxy.adminUrl}/metrics`, { headers: { accept: 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' } })
  t.equal(om.headers['content-type'], OPENMETRICS)
  const text = om.body.toString()
  t.ok(text.endsWith('\n# EOF\n'), 'ends with # EOF')
  t.notMatch(text, /\n\n/, 'no blank lines')
  t.match(text, /^# TYPE sidecar_requests counter$/m, 'a counter family named without _total')
  t.match(text, /^sidecar_requests_total\{backend="app",method="GET",code="200",route="default"\} 1$/m, 'its samples with it')
  t.match(text, /^# HELP sidecar_requests Requests answered, by backend \(\\"none\\" when/m, 'quotes in help texts escaped')
  const exemplar = (name: string) => new RegExp(`^${name}_bucket\\{le="[^"]+",backend="app"[^}]*\\} 1 # \\{trace_id="${line.trace_id}"([^}]*)\\} ([\\d.e-]+) ([\\d.]+)$`, 'm').exec(text)
  const request_ = exemplar('sidecar_request_duration_seconds')
  t.ok(request_, 'the request histogram: the trace of the request, on the bucket it fell in')
  t.equal(request_?.[1], `,span_id="${line.span_id}"`, 'with its SERVER span')
  t.ok(Math.abs(Number(request_?.[3]) - Date.now() / 1000) < 60, 'a timestamp in seconds')
  t.ok(exemplar('sidecar_upstream_attempt_duration_seconds'), 'the attempt histogram: the same trace')

  const plain = (await request(`${proxy.adminUrl}/metrics`)).body.toString()
  t.match(plain, /^# TYPE sidecar_requests_total counter$/m, 'the Prometheus text after it is unchanged')
  t.notMatch(plain, /trace_id/, 'and carries no exemplars')
})

t.test('without tracing, OpenMetrics carries no exemplars', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  await request(`${proxy.url}/untraced`)
  const text = (await request(`${proxy.adminUrl}/metrics`, { headers: { accept: OPENMETRICS } })).body.toString()
  t.match(text, /^sidecar_request_duration_seconds_count\{backend="app",route="default"\} 1$/m)
  t.notMatch(text, / # \{/)
})

const noPrometheus = missing('prometheus', 'no real scrape')

if (noPrometheus && process.env.CI) t.fail(`${noPrometheus}; CI must scrape with a real Prometheus`)
else t.test('a real Prometheus scrapes the admin port in OpenMetrics and keeps the exemplars', { skip: noPrometheus ?? false }, async (t) => {
  const { proxy } = await tracedProxy(t)
  const dir = tempDir(t)
  const port = await freePort()
  writeFileSync(join(dir, 'prometheus.yml'), `global: { scrape_interval: 1s }\nscrape_configs:\n  - job_name: sidecar\n    static_configs: [{ targets: ['${new URL(proxy.adminUrl).host}'] }]\n`)
  const prometheus = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--enable-feature=exemplar-storage'], { stdio: 'ignore' })
  t.teardown(() => new Promise<void>((resolve) => (prometheus.exitCode !== null ? resolve() : (prometheus.once('exit', () => resolve()), prometheus.kill()))))
  const api = async <T>(path: string): Promise<T> => ((await json<{ data: T }>(`http://127.0.0.1:${port}/api/v1/${path}`)).body.data)
  const id = (await request(`${proxy.url}/scraped`)).headers['x-request-id'] as string
  const { trace_id: traceId } = await proxy.accessLine(id)
  type Exemplars = Array<{ exemplars: Array<{ labels: Record<string, string> }> }>
  let found: Exemplars = []
  let health: Array<{ health: string; lastError: string }> = []
  for (let i = 0; i < 100 && found.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 100))
    health = await api<{ activeTargets: Array<{ health: string; lastError: string }> }>('targets').then((d) => d.activeTargets, () => [])
    found = await api<Exemplars>(`query_exemplars?query=sidecar_request_duration_seconds_bucket&start=0&end=${Date.now() / 1000 + 60}`).catch(() => [])
  }
  t.match(health, [{ health: 'up', lastError: '' }], 'the scrape parsed')
  t.same(found.flatMap((s) => s.exemplars.map((e) => e.labels.trace_id)), [traceId], 'the exemplar stored, with the request\'s trace')
  const requests = await api<{ result: Array<{ value: [number, string] }> }>('query?query=sidecar_requests_total')
  t.equal(requests.result[0]?.value[1], '1', 'a counter read back under its own name')
})

t.test('a TLS record the connection cannot take after its handshake: closed and logged as a TLS error, not a bad request', async (t) => {
  const { proxy } = await tlsProxy(t)
  const tcp = net.connect(proxy.port, '127.0.0.1')
  const secure = tls.connect({ socket: tcp, ca: ca.cert, servername: 'localhost', ALPNProtocols: ['http/1.1'] })
  secure.on('error', () => {})
  await new Promise((resolve) => secure.once('secureConnect', resolve))
  secure.write('GET / HTTP/1.1\r\nHost: shop\r\n\r\n')
  await new Promise((resolve) => secure.once('data', resolve)) // the server is past its handshake
  // an application-data record the server cannot decrypt, written under the TLS layer
  tcp.write(Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0x00, 0x20]), Buffer.alloc(32, 7)]))
  await new Promise((resolve) => tcp.once('close', resolve))
  await until(() => proxy.logs.some((l) => l.msg === 'TLS error after the handshake: connection closed'))
  t.match(proxy.logs.find((l) => l.msg === 'TLS error after the handshake: connection closed'), { code: /^ERR_SSL_/ })
  t.same(proxy.logs.filter((l) => l.error === 'bad_request'), [], 'no bad request logged for it')
})
