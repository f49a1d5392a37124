// The CLI as a user meets it: in-process for argument and config handling, and the built
// binary (dist/main.js, made by `npm test`'s build step) for the real run, signals and exit codes.
import { existsSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { main } from '../../src/main.js'
import { BIN, runBinary, waitForLine } from '../fixtures/binary.js'
import { raw, request } from '../fixtures/client.js'
import { devCerts, serverCert } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'
import { opensslCa, opensslIssue } from '../fixtures/openssl.js'

function io() {
  const out: string[] = []
  const err: string[] = []
  const sink: Io = { out: (l) => out.push(l), err: (l) => err.push(l) }
  return { sink, out, err, text: () => [...out, ...err].join('\n') }
}

t.test('validate: a good file exits 0, a broken one exits 2 naming every bad field', async (t) => {
  const dir = t.testdir({
    'good.yaml': 'backends:\n  - name: app\n    url: http://127.0.0.1:8080\n    weight: 90\n    concurrency: { adaptive: { max: 64 } }\n  - name: canary\n    url: http://10.0.0.2:8080\n    weight: 10\n    concurrency: { fixed: 16, maxWaitMs: 200 }\n',
    'broken.yaml': 'listener:\n  address: everywhere\nbackends:\n  - name: app\n    url: ftp://x\n    weight: -1\nretries: 3\n',
  })
  const good = io()
  t.equal(await main(['validate', '--config', `${dir}/good.yaml`], good.sink), 0)
  t.match(good.text(), /good\.yaml: valid, version [0-9a-f]{12}\n/)
  t.match(good.text(), /\n {2}app {2}weight 90 \(90%\) {2}http:\/\/127\.0\.0\.1:8080 {2}gates readiness {2}concurrency adaptive 3-64, wait 1000 ms\n/)
  t.match(good.text(), /\n {2}canary {2}weight 10 \(10%\) {2}http:\/\/10\.0\.0\.2:8080 {2}concurrency 16, wait 200 ms(\n|$)/, 'a remote canary does not gate readiness; each limit said')
  const bad = io()
  t.equal(await main(['validate', '--config', `${dir}/broken.yaml`], bad.sink), 2)
  t.match(bad.text(), /listener\.address: must be host:port/)
  t.match(bad.text(), /backends\[0\]\.url: must be an http:\/\/ or https:\/\/ URL/)
  t.match(bad.text(), /backends\[0\]\.weight: /)
  t.match(bad.text(), /retries: unknown key/)
  const missing = io()
  t.equal(await main(['validate', '--config', `${dir}/nope.yaml`], missing.sink), 2)
  t.match(missing.text(), /cannot read the file/)
})

t.test('validate: an https backend with its TLS files, and the files checked as a start would', async (t) => {
  const ca = opensslCa('mesh CA')
  const client = opensslIssue(ca, { commonName: 'stable', names: ['shop'], usage: 'client' })
  const dir = t.testdir({ 'ca.crt': ca.cert, 'tls.crt': client.cert, 'tls.key': client.key })
  const backend = (tls: string) => `backends:\n  - name: app\n    url: http://127.0.0.1:8080\n  - name: canary\n    url: https://shop-canary:8443\n    weight: 10\n    tls:\n${tls}`
  const files = `      caFile: ${dir}/ca.crt\n      certFile: ${dir}/tls.crt\n      keyFile: ${dir}/tls.key\n      serverName: shop-canary.default.svc\n`
  writeFileSync(`${dir}/good.yaml`, backend(files))
  writeFileSync(`${dir}/no-ca.yaml`, backend(files.replace(`${dir}/ca.crt`, `${dir}/nope.crt`)))
  writeFileSync(`${dir}/plain.yaml`, backend(files).replace('https://shop-canary', 'http://shop-canary'))
  const good = io()
  t.equal(await main(['validate', '--config', `${dir}/good.yaml`], good.sink), 0, good.text())
  t.match(good.text(), /canary {2}weight 10 .* {2}https:\/\/shop-canary:8443/)
  const noCa = io()
  t.equal(await main(['validate', '--config', `${dir}/no-ca.yaml`], noCa.sink), 2)
  t.match(noCa.text(), /backends\[1\]\.tls\.caFile: cannot read the CA bundle .*nope\.crt/)
  const plain = io()
  t.equal(await main(['validate', '--config', `${dir}/plain.yaml`], plain.sink), 2)
  t.match(plain.text(), /backends\[1\]\.tls: is for https:\/\/ backends: this url is http:\/\/, spoken in the clear/)
})

t.test('bad usage exits 2 with the usage text', async (t) => {
  for (const argv of [['--lisen', '127.0.0.1:1'], ['frobnicate'], ['validate'], ['validate', '--config', 'a', '--extra'], ['--plaintext', 'stray']]) {
    const r = io()
    t.equal(await main(argv, r.sink), 2, argv.join(' '))
    t.match(r.err.join('\n'), /^sidecar-proxy: .+\n\nUsage:/, `${argv.join(' ')}: says what is wrong, then how to use it`)
  }
  const help = io()
  t.equal(await main(['--help'], help.sink), 0)
  t.match(help.out[0], /^Usage:/)
})

t.test('run: an invalid config or flag never starts the proxy, exit 2', async (t) => {
  const r = io()
  t.equal(await main(['--plaintext', '--upstream', 'localhost:8080'], r.sink), 2)
  t.match(r.text(), /backends\[0\]\.url: must be an http:\/\/ or https:\/\/ URL/)
  const dir = t.testdir({ 'bad.crt': 'not a certificate', 'k.pem': 'not a key' })
  const tls = io()
  t.equal(await main(['--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--tls-cert', `${dir}/bad.crt`, '--tls-key', `${dir}/k.pem`], tls.sink), 2)
  t.match(tls.text(), /listener\.tls: .*bad\.crt is not a PEM certificate/)
})

t.test('the built binary forwards, serves metrics and stops with exit 0 on SIGTERM', async (t) => {
  t.ok(existsSync(BIN), 'dist/main.js exists (npm test builds it first)')
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const dir = t.testdir({ 'c.yaml': 'drain:\n  delayMs: 200\n' })
  const child = runBinary(['--config', `${dir}/c.yaml`, '--plaintext', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url])
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const reply = await request(`${started.listener as string}/hello`)
  t.equal(reply.status, 200)
  const metrics = (await request(`${started.admin as string}/metrics`)).body.toString()
  t.match(metrics, /sidecar_requests_total\{backend="app",method="GET",code="200",route="default"\} 1/)
  child.kill('SIGTERM')
  t.equal(await child.exited, 0)
  t.ok(child.lines.some((l) => l.msg === 'request' && l.path === '/hello'), 'the access line was flushed before exit')
  t.ok(child.lines.some((l) => l.msg === 'sidecar-proxy stopped'))
})

t.test('a second signal stops the binary at once with exit 1, in-flight requests cut', async (t) => {
  const up = await fakeUpstream()
    .route('/hang', () => {})
    .listen()
  t.teardown(() => up.close())
  const dir = t.testdir({ 'c.yaml': `listener:\n  tls: false\ndrain:\n  timeoutMs: 60000\n` })
  const child = runBinary(['--config', `${dir}/c.yaml`, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url])
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const inFlight = request(`${started.listener as string}/hang`).catch((err: NodeJS.ErrnoException) => err.code)
  for (let i = 0; i < 100 && up.seen.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  child.kill('SIGTERM')
  await waitForLine(child, 'draining: readiness fails, requests still served')
  child.kill('SIGTERM')
  t.equal(await child.exited, 1)
  t.ok(child.lines.some((l) => l.msg === 'second signal: stopping now'))
  t.equal(await inFlight, 'ECONNRESET')
})

t.test('the binary reads SIDECAR_CONFIG and exits 1 when a port is taken, saying which setting moves it', async (t) => {
  const taken = net.createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => taken.close(resolve)))
  const port = (taken.address() as net.AddressInfo).port
  const dir = t.testdir({ 'c.yaml': `listener:\n  address: 127.0.0.1:${port}\n  tls: false\nadmin:\n  address: 127.0.0.1:0\n` })
  const child = runBinary([], { SIDECAR_CONFIG: `${dir}/c.yaml` })
  t.equal(await child.exited, 1)
  t.equal(child.stderr().trim(), `sidecar-proxy: cannot listen on 127.0.0.1:${port} for listener.address (--listen): the port is in use`)
  t.same(child.lines, [], 'nothing on stdout at info: the one line on stderr says it all')
  const debug = runBinary([], { SIDECAR_CONFIG: `${dir}/c.yaml`, SIDECAR_LOG_LEVEL: 'debug' })
  t.equal(await debug.exited, 1)
  t.match(await waitForLine(debug, 'sidecar-proxy could not start'), { level: 'debug', err: { code: 'EADDRINUSE', stack: /listen/ } }, 'the stack at debug')
  const admin = runBinary(['--plaintext', '--listen', '127.0.0.1:0', '--admin', `127.0.0.1:${port}`])
  t.equal(await admin.exited, 1)
  t.equal(admin.stderr().trim(), `sidecar-proxy: cannot listen on 127.0.0.1:${port} for admin.address (--admin): the port is in use`)
})

t.test('SIGTERM drains the binary: the slow request completes, requests during the delay succeed, exit 0', async (t) => {
  const releases: Array<() => void> = []
  const up = await fakeUpstream()
    .route('/slow', (_req, res) => releases.push(() => res.end('finished')))
    .listen()
  t.teardown(() => up.close())
  const dir = t.testdir({ 'c.yaml': 'listener:\n  tls: false\ndrain:\n  delayMs: 400\n  timeoutMs: 5000\n' })
  const child = runBinary(['--config', `${dir}/c.yaml`, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url])
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const slow = request(`${started.listener as string}/slow`)
  for (let i = 0; i < 200 && releases.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  const signalledAt = Date.now()
  child.kill('SIGTERM')
  await waitForLine(child, 'draining: readiness fails, requests still served')
  t.equal((await request(`${started.admin as string}/ready`)).status, 503, 'not ready at once')
  const during = await Promise.all(Array.from({ length: 5 }, () => request(`${started.listener as string}/during`)))
  t.same(during.map((r) => r.status), [200, 200, 200, 200, 200], 'requests during the delay succeed')
  releases[0]!()
  t.equal((await slow).status, 200, 'the slow in-flight request completed')
  t.equal(await child.exited, 0)
  t.ok(Date.now() - signalledAt < 5000, `exited ${Date.now() - signalledAt} ms after SIGTERM, before the 5 s deadline`)
})

t.test('SIGHUP reloads the config file; without one it is logged and the proxy keeps running', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const dir = t.testdir({ 'c.yaml': 'retry:\n  attempts: 2\n' })
  const flags = ['--plaintext', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url]
  const child = runBinary(['--config', `${dir}/c.yaml`, ...flags])
  t.teardown(() => child.kill('SIGKILL'))
  await waitForLine(child, 'sidecar-proxy started')
  writeFileSync(`${dir}/c.yaml`, 'retry:\n  attempts: 3\n')
  child.kill('SIGHUP') // before the file watch's quiet period ends: this reload is the signal's
  t.match(await waitForLine(child, 'config reloaded'), { reason: 'SIGHUP' })

  const bare = runBinary(flags)
  t.teardown(() => bare.kill('SIGKILL'))
  const started = await waitForLine(bare, 'sidecar-proxy started')
  bare.kill('SIGHUP')
  await waitForLine(bare, 'no config file to reload: the proxy runs on defaults and flags')
  t.equal((await request(`${started.admin as string}/live`)).status, 200, 'SIGHUP did not stop it')
})

t.test('NODE_OPTIONS=--insecure-http-parser cannot loosen the listener\'s parser', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const child = runBinary(['--plaintext', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--upstream', up.url], { NODE_OPTIONS: '--insecure-http-parser' })
  t.teardown(() => child.kill('SIGKILL'))
  const started = await waitForLine(child, 'sidecar-proxy started')
  const port = Number(new URL(started.listener as string).port)
  const smuggled = 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
  t.match(await raw(port, smuggled), /^HTTP\/1\.1 400 /, 'Content-Length with Transfer-Encoding: 400')
  t.equal(up.seen.length, 0, 'forwarded: 0 of 1')
})

t.test('validate checks what a start checks before binding: certificate files, key, CA bundle, ports', async (t) => {
  const { server, ca } = devCerts()
  const other = serverCert(ca)
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key, 'other.key': other.key, 'ca.crt': ca.cert, 'junk.pem': 'not a certificate' })
  const cases: Array<[string, string, RegExp | null]> = [
    ['files that exist and match', `listener:\n  tls:\n    certFile: ${dir}/tls.crt\n    keyFile: ${dir}/tls.key\n    clientCaFile: ${dir}/ca.crt\n`, null],
    ['no certificate file', `listener:\n  tls:\n    certFile: /nope/tls.crt\n    keyFile: ${dir}/tls.key\n`, /listener\.tls: cannot read the certificate \/nope\/tls\.crt/],
    ['a key of another certificate', `listener:\n  tls:\n    certFile: ${dir}/tls.crt\n    keyFile: ${dir}/other.key\n`, /other\.key does not match the certificate/],
    ['a CA bundle that is not one', `listener:\n  tls:\n    clientCaFile: ${dir}/junk.pem\n`, /listener\.tls\.clientCaFile: .*junk\.pem holds no PEM certificate/],
    ['listener and admin on one port', 'listener:\n  address: 0.0.0.0:9901\n', /admin\.address: the listener is already on 0\.0\.0\.0:9901/],
  ]
  for (const [what, yaml, problem] of cases) {
    const file = `${dir}/${what.replace(/\W+/g, '-')}.yaml`
    writeFileSync(file, yaml)
    const r = io()
    t.equal(await main(['validate', '--config', file], r.sink), problem ? 2 : 0, what)
    if (problem) t.match(r.err.join('\n'), problem, `${what}: said`)
  }
})
