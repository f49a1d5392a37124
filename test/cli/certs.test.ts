import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { promisify } from 'node:util'
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { main } from '../../src/main.js'

function io() {
  const lines: string[] = []
  const out: string[] = []
  const sink: Io = { out: (l) => (lines.push(l), out.push(l)), err: (l) => lines.push(l) }
  return { sink, text: () => lines.join('\n'), out: () => out.join('\n') }
}

t.test('certs writes a CA and a server certificate that openssl verifies', async (t) => {
  const dir = t.testdir()
  const r = io()
  t.equal(await main(['certs', '--out', `${dir}/out`, '--hosts', 'localhost, 127.0.0.1,api.internal', '--days', '7'], r.sink), 0)
  t.match(r.text(), /--tls-cert .*tls\.crt --tls-key .*tls\.key/)
  const { stdout } = await promisify(execFile)('openssl', ['verify', '-CAfile', `${dir}/out/ca.crt`, `${dir}/out/tls.crt`])
  t.match(stdout, /tls\.crt: OK/)
  const leaf = new X509Certificate(readFileSync(`${dir}/out/tls.crt`))
  t.equal(leaf.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, DNS:api.internal')
  t.ok((Date.parse(leaf.validTo) - Date.now()) / 86_400_000 <= 7)
  t.equal(statSync(`${dir}/out/tls.key`).mode & 0o777, 0o600, 'keys are private')
  t.equal(statSync(`${dir}/out/ca.key`).mode & 0o777, 0o600)
})

t.test('certs: bad usage exits 2 and says why', async (t) => {
  for (const [argv, why] of [
    [['certs'], /needs --out DIR/],
    [['certs', '--out', 'x', '--days', '0'], /--days must be a whole number/],
    [['certs', '--out', 'x', '--days', 'ten'], /--days must be a whole number/],
    [['certs', '--out', 'x', '--hosts', ' , '], /--hosts needs at least one/],
    [['certs', '--out', 'x', '--frobnicate'], /Unknown option '--frobnicate'/],
  ] as const) {
    const r = io()
    t.equal(await main([...argv], r.sink), 2, argv.join(' '))
    t.match(r.text(), why)
  }
})

t.test('certs never replaces existing files without --force; the CA key comes with a warning', async (t) => {
  const dir = t.testdir({ 'tls.crt': 'committed certificate' })
  const r = io()
  t.equal(await main(['certs', '--out', dir], r.sink), 2, 'exit 2')
  t.match(r.text(), /tls\.crt exists; pass --force/)
  t.equal(readFileSync(`${dir}/tls.crt`, 'utf8'), 'committed certificate', 'untouched')
  const forced = io()
  t.equal(await main(['certs', '--out', dir, '--force'], forced.sink), 0)
  t.match(readFileSync(`${dir}/tls.crt`, 'utf8'), /BEGIN CERTIFICATE/, 'replaced with --force')
  t.match(forced.text(), /ca\.key can sign certificates .* keep it private and out of version control/)
  t.match(forced.out(), /try: {2}curl --cacert .*https:\/\/localhost:8443\//, 'a certificate for localhost: the curl hint')

  const other = io()
  t.equal(await main(['certs', '--out', `${dir}/shop`, '--hosts', 'shop.default.svc'], other.sink), 0)
  t.notMatch(other.out(), /curl/, 'not for localhost: no hint that would fail verification')
  const ignored = readFileSync(new URL('../../.gitignore', import.meta.url), 'utf8')
  t.match(ignored, /^certs\/ca\.key$/m, "a CA key made in the repository's certs/ is ignored by git")
})

t.test('every command answers --help with its own usage, and --version the version', async (t) => {
  for (const [argv, first] of [
    [['validate', '--help'], /^Usage:\n {2}sidecar-proxy validate --config FILE/],
    [['certs', '-h'], /^Usage:\n {2}sidecar-proxy certs --out DIR/],
    [['await', '--help'], /^Usage:\n {2}sidecar-proxy await /],
    [['await', '--help', '--', 'true'], /^Usage:\n {2}sidecar-proxy await /],
    [['--help'], /^Usage:\n {2}sidecar-proxy \[--config FILE\]/],
    [['--plaintext', '--help'], /^Usage:\n {2}sidecar-proxy \[--config FILE\]/],
  ] as const) {
    const r = io()
    t.equal(await main([...argv], r.sink), 0, argv.join(' '))
    t.match(r.out(), first, `${argv.join(' ')}: its usage`)
  }
  const v = io()
  t.equal(await main(['--version'], v.sink), 0)
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  t.equal(v.out(), version)
})

t.test("bad usage of a command shows that command's usage, not the whole list", async (t) => {
  const r = io()
  t.equal(await main(['validate'], r.sink), 2)
  t.match(r.text(), /^sidecar-proxy: validate needs --config FILE\n\nUsage:\n {2}sidecar-proxy validate --config FILE/)
  t.notMatch(r.text(), /Commands:/)
  const run = io()
  t.equal(await main(['--lisen', 'x'], run.sink), 2)
  t.match(run.text(), /Commands:/, 'the proxy itself: the whole usage, with the commands')
})
