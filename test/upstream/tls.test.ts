// Backend TLS: which failures count as TLS ones (and in what words), the settings read from
// files with config paths in their errors, and the log that speaks only on a change.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { validateConfig } from '../../src/config/load.js'
import { HandshakeLog, connectOptions, loadBackendTls, sameTls, tlsFailure } from '../../src/upstream/tls.js'
import { opensslCa, opensslIssue } from '../fixtures/openssl.js'
import type { Logger } from '../../src/log.js'

t.test('TLS failures in words; everything else is not a TLS failure', async (t) => {
  const table: Array<[unknown, RegExp | undefined]> = [
    [{ code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, /not signed by a CA this proxy trusts/],
    [{ code: 'SELF_SIGNED_CERT_IN_CHAIN' }, /not signed by a CA/],
    [{ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }, /not signed by a CA/],
    [{ code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, /does not carry the name/],
    [{ code: 'CERT_HAS_EXPIRED' }, /has expired/],
    [{ code: 'CERT_NOT_YET_VALID' }, /not valid yet/],
    [{ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' }, /requires a client certificate/],
    [{ code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' }, /refused our client certificate/],
    [{ code: 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE' }, /refused our client certificate/],
    [{ code: 'ERR_SSL_WRONG_VERSION_NUMBER' }, /does not speak TLS/],
    [{ code: 'ERR_SSL_SOMETHING_ELSE' }, /handshake with the backend failed/],
    [{ code: 'ECONNRESET', message: 'Client network socket disconnected before secure TLS connection was established' }, /during the TLS handshake/],
    [{ code: 'UND_ERR_SOCKET', message: 'other side closed', socket: { bytesRead: 0 } }, /right after the TLS handshake/],
    // a connection that had carried answers before, closed: a reset, not TLS
    [{ code: 'UND_ERR_SOCKET', message: 'other side closed', socket: { bytesRead: 312 } }, undefined],
    [{ code: 'ECONNRESET', message: 'read ECONNRESET' }, undefined],
    [{ code: 'ECONNREFUSED' }, undefined],
    [{ code: 42 }, undefined],
    [null, undefined],
  ]
  for (const [err, words] of table) {
    const got = tlsFailure(err)
    if (words === undefined) t.equal(got, undefined, JSON.stringify(err))
    else t.match(got, words, JSON.stringify(err))
    if (got !== undefined) t.notMatch(got, /SSL|ERR_|alert/, 'words, not OpenSSL text')
  }
})

t.test('settings from files: checked, with the config path in every error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-upstream-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = opensslCa('mesh CA')
  const client = opensslIssue(ca, { commonName: 'stable', names: ['shop'], usage: 'client' })
  const other = opensslIssue(ca, { commonName: 'other', names: ['other'], usage: 'client' })
  const file = (name: string, content: string) => {
    writeFileSync(join(dir, name), content)
    return join(dir, name)
  }
  const caFile = file('ca.crt', ca.cert)
  const certFile = file('tls.crt', client.cert)
  const keyFile = file('tls.key', client.key)
  const config = (tls: Record<string, unknown> | undefined, url = 'https://10.0.0.7:8443') =>
    validateConfig({ backends: [{ name: 'app', url: 'http://127.0.0.1:8080' }, { name: 'canary', url, ...(tls && { tls }) }] }).backends

  const read = await loadBackendTls(config({ caFile, certFile, keyFile, serverName: 'shop-canary.default.svc' }))
  t.same([...read.keys()], ['canary'], 'only https backends')
  const canary = read.get('canary')!
  t.equal(canary.servername, 'shop-canary.default.svc')
  t.equal(canary.ca, ca.cert)
  t.equal(canary.client?.cert, client.cert)
  t.match(connectOptions(canary), { rejectUnauthorized: true, servername: 'shop-canary.default.svc', ca: ca.cert, cert: client.cert, key: client.key })

  t.equal((await loadBackendTls(config(undefined))).get('canary')?.servername, null, 'an IP address: no SNI, the certificate must carry the IP')
  t.equal((await loadBackendTls(config(undefined, 'https://shop-canary:8443'))).get('canary')?.servername, 'shop-canary', "default: the URL's host")
  t.same(connectOptions({ servername: null }), { rejectUnauthorized: true }, "no files: the system's CAs, no client certificate")

  await t.rejects(loadBackendTls(config({ caFile: join(dir, 'missing.crt') })), { code: 'tls_material_invalid', message: /^backends\[1\]\.tls\.caFile: cannot read the CA bundle/ })
  await t.rejects(loadBackendTls(config({ caFile: keyFile })), { message: /^backends\[1\]\.tls\.caFile: .* holds no PEM certificate/ })
  await t.rejects(loadBackendTls(config({ certFile, keyFile: file('other.key', other.key) })), { message: /^backends\[1\]\.tls: .*other\.key does not match the certificate/ })

  const again = (await loadBackendTls(config({ caFile, certFile, keyFile, serverName: 'shop-canary.default.svc' }))).get('canary')!
  t.ok(sameTls(canary, again), 'the same files read twice are the same')
  t.notOk(sameTls(canary, { ...again, client: undefined }), 'a client certificate gone is a change')
})

t.test('the config: tls only on https backends, certFile and keyFile together', async (t) => {
  t.throws(() => validateConfig({ backends: [{ name: 'app', url: 'http://127.0.0.1:8080', tls: { caFile: '/ca.crt' } }] }), {
    message: /backends\[0\]\.tls: is for https:\/\/ backends/,
  })
  t.throws(() => validateConfig({ backends: [{ name: 'app', url: 'https://a:1', tls: { certFile: '/c' } }] }), { message: /backends\[0\]\.tls\.keyFile: required: certFile and keyFile go together/ })
  t.throws(() => validateConfig({ backends: [{ name: 'app', url: 'https://a:1', tls: { serverName: 'not a name' } }] }), { message: /backends\[0\]\.tls\.serverName: must be a DNS name/ })
  t.throws(() => validateConfig({ backends: [{ name: 'app', url: 'https://a:1', tls: { cafile: '/c' } }] }), { message: /backends\[0\]\.tls: unknown key "cafile"|cafile/ })
  t.equal(validateConfig({ backends: [{ name: 'app', url: 'https://a:1', tls: { caFile: '/c' } }] }).backends[0]!.tls?.caFile, '/c')
})

t.test('the handshake log speaks once per change, never per request', async (t) => {
  const lines: Array<[string, Record<string, unknown>, string]> = []
  const logger = { warn: (o: Record<string, unknown>, m: string) => lines.push(['warn', o, m]), info: (o: Record<string, unknown>, m: string) => lines.push(['info', o, m]) } as unknown as Logger
  const log = new HandshakeLog('canary', logger)
  log.succeeded()
  for (let i = 0; i < 5; i++) log.failed('reason A')
  log.failed('reason B')
  log.succeeded()
  log.succeeded()
  t.same(
    lines.map(([level, o]) => [level, o.reason ?? null]),
    [
      ['warn', 'reason A'],
      ['warn', 'reason B'],
      ['info', null],
    ],
  )
})
