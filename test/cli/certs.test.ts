import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { promisify } from 'node:util'
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { main } from '../../src/main.js'

function io() {
  const lines: string[] = []
  const sink: Io = { out: (l) => lines.push(l), err: (l) => lines.push(l) }
  return { sink, text: () => lines.join('\n') }
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
    [['certs', '--out', 'x', '--force'], /Unknown option '--force'/],
  ] as const) {
    const r = io()
    t.equal(await main([...argv], r.sink), 2, argv.join(' '))
    t.match(r.text(), why)
  }
})
