// TLS termination on loopback with real handshakes: certificates from the project's generator,
// HTTP/1.1 and HTTP/2 on one port, protocol and cipher policy checked with `openssl s_client`,
// hot rotation under load, bad certificates, junk on the port, and client certificates.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import http2 from 'node:http2'
import https from 'node:https'
import net from 'node:net'
import { Readable } from 'node:stream'
import tls from 'node:tls'
import t, { type Test } from 'tap'
import { issueCertificate, createCa } from '../../src/certs/generate.js'
import { json, request } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream, pseudoRandomChunks, sha256Of, type Echo } from '../fixtures/upstream.js'
import { SecretDir, devCerts, serialOf, servedSerial, serverCert } from '../fixtures/tls.js'

const { ca, server } = devCerts()

async function tlsProxy(t: Test, tlsConfig: Record<string, unknown> = {}, listener: Record<string, unknown> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const secret = new SecretDir(`${dir}/secret`)
  secret.write(server.cert, server.key)
  const setup = await proxied(t, fakeUpstream(), {
    listener: { tls: { certFile: secret.certFile, keyFile: secret.keyFile, ...tlsConfig }, ...listener },
  })
  return { ...setup, secret, base: `https://127.0.0.1:${setup.proxy.port}` }
}

/** Runs `openssl s_client` (asynchronously: the proxy under test shares this event loop). */
function s_client(port: number, args: string[], input = ''): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      'openssl',
      ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', ...args],
      { encoding: 'utf8', timeout: 10_000 },
      (err, stdout, stderr) => {
        const output = `${stdout}\n${stderr}`
        // OpenSSL 3 prints "Cipher is (NONE)" when no handshake completed
        const negotiated = /(New|Reused), (TLSv[\d.]+|SSLv3), Cipher is (?!\(NONE\))/.test(output)
        resolve({ ok: !err && negotiated, output })
      },
    )
    child.stdin?.end(input)
  })
}

t.test('HTTPS with HTTP/1.1: verified against the dev CA, forwarded as plain HTTP with proto https', async (t) => {
  const { base, up } = await tlsProxy(t)
  const { reply, body } = await json<Echo>(`${base}/over-tls`, { tls: { ca: ca.cert } })
  t.equal(reply.status, 200)
  t.equal(body.headers['x-forwarded-proto'], 'https')
  t.equal(up.seen[0]!.headers['x-forwarded-proto'], 'https')
  await t.rejects(request(`${base}/`), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, 'without the CA the chain does not verify')
})

t.test('HTTP/2: byte-exact both ways, pseudo-headers never reach the app, Host from :authority', async (t) => {
  const { base } = await tlsProxy(t)
  const session = http2.connect(base, { ca: ca.cert, servername: 'localhost' })
  t.teardown(() => session.close())
  const size = 1024 * 1024 + 3
  const stream = session.request({ ':method': 'POST', ':path': '/h2?x=1', ':authority': 'shop.example', 'content-type': 'application/octet-stream' })
  Readable.from(pseudoRandomChunks(size)).pipe(stream)
  const [headers, body] = await Promise.all([
    new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once('response', resolve)),
    (async () => {
      const chunks: Buffer[] = []
      for await (const c of stream) chunks.push(c as Buffer)
      return JSON.parse(Buffer.concat(chunks).toString()) as Echo
    })(),
  ])
  t.equal(headers[':status'], 200)
  t.match(headers['x-request-id'], /^[0-9a-f-]{36}$/)
  t.equal(body.method, 'POST')
  t.equal(body.url, '/h2?x=1')
  t.equal(body.bodyBytes, size)
  t.equal(body.sha256, sha256Of(pseudoRandomChunks(size)))
  t.same(Object.keys(body.headers).filter((h) => h.startsWith(':')), [], 'no pseudo-header reached the app')
  t.equal(body.headers.host, 'shop.example')
  t.equal(body.headers['x-forwarded-host'], 'shop.example')
  t.equal(body.headers['transfer-encoding'], 'chunked', 'a body of undeclared length goes to the app chunked')

  // a large response over HTTP/2, checked by hash
  const big = session.request({ ':path': '/big' })
  const chunks: Buffer[] = []
  for await (const c of big) chunks.push(c as Buffer)
  t.equal(JSON.parse(Buffer.concat(chunks).toString()).method, 'GET')
})

t.test('ALPN offers h2 and http/1.1; with listener.http2 off only http/1.1', async (t) => {
  const alpn = (port: number) =>
    new Promise<string | false | null>((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: ca.cert, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
        resolve(s.alpnProtocol)
        s.end()
      })
      s.on('error', reject)
    })
  const on = await tlsProxy(t)
  t.equal(await alpn(on.proxy.port), 'h2')
  const off = await tlsProxy(t, {}, { http2: false })
  t.equal(await alpn(off.proxy.port), 'http/1.1')
  t.equal((await request(`${off.base}/`, { tls: { ca: ca.cert } })).status, 200)
})

t.test('protocol and cipher policy, checked with openssl s_client', async (t) => {
  const { proxy } = await tlsProxy(t)
  const port = proxy.port
  const weak = 'DEFAULT@SECLEVEL=0' // let this client offer what the server must refuse
  const refused: Array<[string, string[]]> = [
    ['TLS 1.0', ['-tls1', '-cipher', weak]],
    ['TLS 1.1', ['-tls1_1', '-cipher', weak]],
    ['CBC with ECDHE', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA']],
    ['RSA key exchange', ['-tls1_2', '-cipher', 'AES128-GCM-SHA256:AES256-GCM-SHA384']],
    ['NULL cipher', ['-tls1_2', '-cipher', 'NULL-SHA256:ECDHE-RSA-NULL-SHA@SECLEVEL=0']],
    ['curve P-521 only', ['-tls1_3', '-groups', 'P-521']],
  ]
  for (const [name, args] of refused) {
    const r = await s_client(port, args)
    t.notOk(r.ok, `${name} is refused`) || t.comment(r.output)
    // refused by the server's policy (an alert), not for some unrelated reason
    t.match(r.output, /alert (protocol version|handshake failure)|SSL alert number (40|70)/, `${name}: the server sent an alert`)
  }
  const accepted: Array<[string, string[], RegExp]> = [
    ['TLS 1.3', ['-tls1_3'], /TLSv1\.3, Cipher is TLS_AES_(128|256)_GCM_SHA(256|384)/],
    ['TLS 1.3 ChaCha20', ['-tls1_3', '-ciphersuites', 'TLS_CHACHA20_POLY1305_SHA256'], /Cipher is TLS_CHACHA20_POLY1305_SHA256/],
    ['TLS 1.2 ECDHE AES-GCM', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256'], /TLSv1\.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256/],
    ['TLS 1.2 ECDHE ChaCha20', ['-tls1_2', '-cipher', 'ECDHE-RSA-CHACHA20-POLY1305'], /Cipher is ECDHE-RSA-CHACHA20-POLY1305/],
    ['X25519', ['-tls1_3', '-groups', 'X25519'], /Server Temp Key: X25519/],
  ]
  for (const [name, args, expect] of accepted) {
    const r = await s_client(port, args)
    t.ok(r.ok, `${name} is accepted`) || t.comment(r.output)
    t.match(r.output, expect)
  }
  // `R` asks openssl to renegotiate once the handshake is done
  const reneg = await s_client(port, ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256'], 'R\n')
  t.match(reneg.output, /RENEGOTIATING[^]*no renegotiation/, 'a client-initiated renegotiation is refused')
})

t.test('TLS 1.2 renegotiation is refused', async (t) => {
  const { proxy } = await tlsProxy(t)
  const socket = tls.connect({ port: proxy.port, host: '127.0.0.1', servername: 'localhost', ca: ca.cert, maxVersion: 'TLSv1.2', ALPNProtocols: ['http/1.1'] })
  await new Promise((resolve) => socket.once('secureConnect', resolve))
  const result = await new Promise<Error | null>((resolve) => {
    socket.on('error', resolve)
    socket.renegotiate({}, (err) => resolve(err ?? null))
  })
  socket.destroy()
  t.ok(result, `the server did not renegotiate (${result?.message})`)
})

t.test('certificate rotation under load: new handshakes get the new serial within 2 s, no request fails', async (t) => {
  const { base, proxy, secret } = await tlsProxy(t)
  const before = serialOf(server.cert)
  t.equal(await servedSerial(proxy.port, ca.cert), before)
  const keepAlive = new https.Agent({ keepAlive: true, maxSockets: 1, ca: ca.cert, servername: 'localhost' })
  t.teardown(() => keepAlive.destroy())
  t.equal((await request(`${base}/warm`, { agent: keepAlive })).status, 200)

  const next = serverCert(ca)
  const after = serialOf(next.cert)
  const failures: string[] = []
  let done = 0
  let stop = false
  const worker = async () => {
    while (!stop) {
      try {
        const r = await request(`${base}/load`, { tls: { ca: ca.cert } })
        if (r.status !== 200) failures.push(`status ${r.status} ${String(r.headers['x-sidecar-error'])}`)
      } catch (err) {
        failures.push((err as Error).message)
      }
      done++
    }
  }
  const workers = Array.from({ length: 4 }, worker)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const rotatedAt = Date.now()
  secret.write(next.cert, next.key)
  let served = before
  while (served !== after && Date.now() - rotatedAt < 5000) {
    served = await servedSerial(proxy.port, ca.cert)
    if (served !== after) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const took = Date.now() - rotatedAt
  await new Promise((resolve) => setTimeout(resolve, 300))
  stop = true
  await Promise.all(workers)
  t.equal(served, after, 'the new certificate is served')
  t.ok(took < 2000, `within 2 s (took ${took} ms)`)
  t.same(failures, [], `no request failed (${done} made across the rotation)`)
  t.equal((await request(`${base}/still-open`, { agent: keepAlive })).status, 200, 'a connection opened before the rotation is still served')
  const metrics = (await request(`${proxy.adminUrl}/metrics`)).body.toString()
  t.match(metrics, /sidecar_config_reloads_total\{kind="tls",result="success"\} 1/)
  t.match(metrics, new RegExp(`sidecar_tls_cert_expiry_timestamp_seconds ${new Date(new (await import('node:crypto')).X509Certificate(next.cert).validTo).getTime() / 1000}`))
})

t.test('a corrupt certificate, a mismatched key or a half-written file keep the last good certificate', async (t) => {
  const { proxy, secret } = await tlsProxy(t)
  const good = serialOf(server.cert)
  const other = serverCert(ca)
  const attempts: Array<[string, string, string]> = [
    ['corrupt certificate', 'garbage', server.key],
    ['key of another certificate', server.cert, other.key],
    ['half-written certificate', other.cert.slice(0, other.cert.length / 2), other.key],
  ]
  for (const [i, [name, cert, key]] of attempts.entries()) {
    secret.write(cert, key)
    const failures = async () => {
      const text = (await request(`${proxy.adminUrl}/metrics`)).body.toString()
      return Number(/sidecar_config_reloads_total\{kind="tls",result="failure"\} (\d+)/.exec(text)?.[1] ?? 0)
    }
    for (let n = 0; n < 100 && (await failures()) < i + 1; n++) await new Promise((resolve) => setTimeout(resolve, 30))
    t.equal(await failures(), i + 1, `${name}: counted as a failed reload`)
    t.equal(await servedSerial(proxy.port, ca.cert), good, `${name}: still serving the last good certificate`)
  }
  t.match(
    proxy.logs.filter((l) => l.msg === 'certificate reload failed; still serving the last good certificate').map((l) => (l.err as { message: string }).message),
    [/is not a PEM certificate/, /does not match the certificate/, /is not a PEM certificate/],
  )
  secret.write(other.cert, other.key)
  for (let n = 0; n < 100 && (await servedSerial(proxy.port, ca.cert)) !== serialOf(other.cert); n++) await new Promise((resolve) => setTimeout(resolve, 30))
  t.equal(await servedSerial(proxy.port, ca.cert), serialOf(other.cert), 'a good pair afterwards is picked up')
})

t.test('plain HTTP and random bytes on the TLS port are closed; the proxy keeps serving', async (t) => {
  const { base, proxy } = await tlsProxy(t)
  const junk = async (payload: Buffer | string) =>
    new Promise<'server' | 'client timer'>((resolve) => {
      const s = net.connect(proxy.port, '127.0.0.1', () => s.write(payload))
      let ours = false
      const timer = setTimeout(() => {
        ours = true
        s.destroy()
      }, 4000)
      s.resume() // read, so that the server's FIN is seen
      s.on('error', () => {})
      s.on('close', () => {
        clearTimeout(timer)
        resolve(ours ? 'client timer' : 'server')
      })
    })
  t.equal(await junk('GET / HTTP/1.1\r\nHost: a\r\n\r\n'), 'server', 'plain HTTP: closed by the server')
  t.equal(await junk(createHash('sha512').update('noise').digest()), 'server', 'random bytes: closed by the server')
  t.equal(await junk(Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])), 'server', 'a TLS record header with a bad length: closed by the server')
  t.equal((await request(`${base}/after-junk`, { tls: { ca: ca.cert } })).status, 200)
})

t.test('a ClientHello that stalls halfway is closed at listener.tls.handshakeTimeoutMs', async (t) => {
  const { base, proxy } = await tlsProxy(t, { handshakeTimeoutMs: 400 })
  const closedAfter = await new Promise<number>((resolve) => {
    const started = Date.now()
    // a handshake record announcing 512 bytes, then 5 of them, then silence
    const s = net.connect(proxy.port, '127.0.0.1', () => s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])))
    const timer = setTimeout(() => s.destroy(), 4000)
    s.resume()
    s.on('error', () => {})
    s.on('close', () => {
      clearTimeout(timer)
      resolve(Date.now() - started)
    })
  })
  t.ok(closedAfter >= 350 && closedAfter < 3000, `closed by the server after ${closedAfter} ms (handshakeTimeoutMs 400)`)
  t.equal((await request(`${base}/after-stall`, { tls: { ca: ca.cert } })).status, 200, 'the proxy keeps serving')
})

t.test('HTTP/1 limits hold on the TLS listener too (431 from the parser)', async (t) => {
  const { proxy } = await tlsProxy(t, {}, {})
  const response = await new Promise<string>((resolve, reject) => {
    const s = tls.connect({ port: proxy.port, host: '127.0.0.1', servername: 'localhost', ca: ca.cert, ALPNProtocols: ['http/1.1'] }, () =>
      s.write(`GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`),
    )
    let text = ''
    s.on('data', (c: Buffer) => (text += c.toString()))
    s.on('error', reject)
    s.on('close', () => resolve(text))
  })
  t.match(response, /^HTTP\/1\.1 431 /)
  t.match(response, /x-sidecar-error: headers_too_large/)
})

t.test('mTLS: a required client certificate is checked; its subject reaches the app only when configured', async (t) => {
  const clientCa = createCa('client CA', 1)
  const billing = issueCertificate(clientCa, { commonName: 'billing', usage: 'client', days: 1 })
  const stranger = issueCertificate(createCa('other CA', 1), { commonName: 'stranger', usage: 'client', days: 1 })
  const dir = t.testdir({ 'client-ca.pem': clientCa.cert })
  const { base } = await tlsProxy(t, { clientCaFile: `${dir}/client-ca.pem`, clientSubjectHeader: 'x-client-subject' })

  const ok = await json<Echo>(`${base}/mtls`, { tls: { ca: ca.cert, cert: billing.cert, key: billing.key }, headers: { 'x-client-subject': 'CN=admin' } })
  t.equal(ok.reply.status, 200)
  t.equal(ok.body.headers['x-client-subject'], 'CN=billing', 'the verified subject, not the one the client sent')
  await t.rejects(request(`${base}/mtls`, { tls: { ca: ca.cert } }), 'no client certificate: refused')
  await t.rejects(request(`${base}/mtls`, { tls: { ca: ca.cert, cert: stranger.cert, key: stranger.key } }), 'a certificate from another CA: refused')

  const optional = await tlsProxy(t, { clientCaFile: `${dir}/client-ca.pem`, requireClientCert: false, clientSubjectHeader: 'x-client-subject' })
  const anonymous = await json<Echo>(`${optional.base}/mtls`, { tls: { ca: ca.cert }, headers: { 'x-client-subject': 'CN=admin' } })
  t.equal(anonymous.reply.status, 200, 'optional: no certificate is let through')
  t.equal(anonymous.body.headers['x-client-subject'], undefined, 'and a client-sent subject header is dropped')
  const named = await json<Echo>(`${optional.base}/mtls`, { tls: { ca: ca.cert, cert: billing.cert, key: billing.key } })
  t.equal(named.body.headers['x-client-subject'], 'CN=billing')
})

t.test('no certificate configured: an ephemeral self-signed one, with a warning', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream(), { listener: { tls: {} } })
  const warning = proxy.logs.find((l) => l.level === 'warn')
  t.match(warning, { msg: /ephemeral self-signed certificate/, subject: 'CN=sidecar-proxy ephemeral' })
  const reply = await request(`https://127.0.0.1:${proxy.port}/`, { tls: { rejectUnauthorized: false } })
  t.equal(reply.status, 200)
  const cert = await new Promise<tls.PeerCertificate>((resolve) => {
    const s = tls.connect({ port: proxy.port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      resolve(s.getPeerCertificate())
      s.end()
    })
    s.on('error', () => {}) // the proxy closing first is fine here
  })
  t.equal(cert.subject.CN, 'sidecar-proxy ephemeral')
  t.match(cert.subjectaltname, /DNS:localhost/)
})
