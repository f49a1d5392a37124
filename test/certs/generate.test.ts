import { X509Certificate, createPrivateKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { createCa, issueCertificate, selfSigned } from '../../src/certs/generate.js'

t.test('a CA and a server certificate it signs: SANs, usages, validity, key match', async (t) => {
  const ca = createCa('test CA', 10)
  const leaf = issueCertificate(ca, { commonName: 'localhost', hosts: ['localhost', '127.0.0.1', '::1', 'svc.local'], usage: 'server', days: 3 })
  const caX = new X509Certificate(ca.cert)
  const x = new X509Certificate(leaf.cert)
  t.ok(caX.ca, 'the CA is a CA')
  t.notOk(x.ca, 'the leaf is not')
  t.ok(x.verify(caX.publicKey), 'signed by the CA')
  t.ok(x.checkIssued(caX), 'issuer matches')
  t.ok(x.checkPrivateKey(createPrivateKey(leaf.key)))
  t.equal(x.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:svc.local')
  t.same(x.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'serverAuth only')
  const days = (Date.parse(x.validTo) - Date.now()) / 86_400_000
  t.ok(days > 2.9 && days <= 3, `valid for the requested 3 days (${days.toFixed(2)})`)
  t.ok(Date.parse(x.validFrom) < Date.now(), 'already valid (back-dated for clock skew)')
  t.equal(createPrivateKey(leaf.key).asymmetricKeyDetails?.modulusLength, 2048)
  t.not(x.serialNumber, caX.serialNumber)
})

t.test('client certificates carry clientAuth; self-signed ones are their own issuer', async (t) => {
  const ca = createCa('client CA', 1)
  const client = new X509Certificate(issueCertificate(ca, { commonName: 'billing', usage: 'client', days: 1 }).cert)
  t.same(client.keyUsage, ['1.3.6.1.5.5.7.3.2'])
  t.equal(client.subjectAltName, undefined)
  const self = selfSigned({ commonName: 'eph', hosts: ['localhost'], days: 1 })
  const x = new X509Certificate(self.cert)
  t.equal(x.subject, 'CN=eph')
  t.equal(x.issuer, 'CN=eph')
  t.ok(x.verify(x.publicKey))
})

t.test('the committed development certificates belong together', async (t) => {
  const dir = new URL('../../certs/', import.meta.url)
  const ca = new X509Certificate(readFileSync(new URL('ca.crt', dir)))
  const leaf = new X509Certificate(readFileSync(new URL('tls.crt', dir)))
  t.ok(leaf.verify(ca.publicKey), 'tls.crt is signed by ca.crt')
  t.ok(leaf.checkPrivateKey(createPrivateKey(readFileSync(new URL('tls.key', dir)))), 'tls.key matches tls.crt')
  t.match(leaf.subjectAltName, /DNS:localhost/)
  t.match(ca.subject, /not for production/)
})
