// The listener's TLS facts as a client sees them, checked with the real `openssl s_client`
// against the real proxy on loopback: the ticket lifetime a client is told (TLS 1.2 and 1.3, and
// after a certificate reload), resumption in both versions, what ends a ticket (a reload, a key
// rotation), and SNI: served with or without a name, not acknowledged (src/server/tls.ts says
// why; docs/configuration.md, TLS).
import { spawn } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { TICKET_KEY_ROTATION_MS, TICKET_LIFETIME_S } from '../../src/server/tls.js'
import { fakeClock } from '../fixtures/clock.js'
import { proxied, startProxy } from '../fixtures/proxy.js'
import { SecretDir, devCerts, serialOf, servedSerial, serverCert } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'

const { ca, server } = devCerts()

/** The proxy with TLS from a Secret-style directory (so that the test can rotate it). */
async function tlsProxy(t: Test) {
  const dir = t.testdir({})
  const secret = new SecretDir(join(dir, 'secret'))
  secret.write(server.cert, server.key)
  const { proxy } = await proxied(t, fakeUpstream(), { listener: { tls: { certFile: secret.certFile, keyFile: secret.keyFile } } })
  return { proxy, secret, dir }
}

interface Run {
  output: string
  /** "New, TLSv1.3" or "Reused, TLSv1.2", one per handshake (several with -reconnect). */
  handshakes: string[]
  /** Every "TLS session ticket lifetime hint" the client printed. */
  hints: number[]
  /** The serial of the certificate s_client shows: the server's (on a resumption, the one the
   *  saved session holds). */
  serial: string | undefined
  /** Whether the server's hello (or TLS 1.3 EncryptedExtensions) held a server_name extension. */
  sniAcknowledged: boolean
}

const HANDSHAKE = /^(New|Reused), (TLSv1\.[23]), Cipher is (?!\(NONE\))/gm

/**
 * `openssl s_client` to the proxy (asynchronously: the proxy shares this event loop). Its input
 * stays open (at most 5 s; the process is killed at 10 s) until it has printed `handshakes` handshakes, and with `ticket`, until
 * it has written a session ticket there (-sess_out): a TLS 1.3 ticket arrives after the
 * handshake, and s_client's report of it is only flushed when it exits.
 */
function s_client(port: number, args: string[], wait: { handshakes?: number; ticket?: string } = {}): Promise<Run> {
  return new Promise((resolve) => {
    if (wait.ticket !== undefined) rmSync(wait.ticket, { force: true })
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-tlsextdebug', ...args, ...(wait.ticket === undefined ? [] : ['-sess_out', wait.ticket])], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let output = ''
    const ready = () =>
      (output.match(HANDSHAKE)?.length ?? 0) >= (wait.handshakes ?? 1) &&
      (wait.ticket === undefined || (existsSync(wait.ticket) && readFileSync(wait.ticket, 'utf8').includes('-----END SSL SESSION PARAMETERS-----')))
    const started = Date.now()
    const poll = setInterval(() => {
      if (ready() || Date.now() - started > 5000) {
        clearInterval(poll)
        child.stdin.end()
      }
    }, 10)
    const stuck = setTimeout(() => child.kill(), 10_000)
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()))
    child.on('close', () => {
      clearInterval(poll)
      clearTimeout(stuck)
      const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(output)?.[0]
      resolve({
        output,
        handshakes: [...output.matchAll(HANDSHAKE)].map((m) => `${m[1]}, ${m[2]}`),
        hints: [...output.matchAll(/TLS session ticket lifetime hint: (\d+) \(seconds\)/g)].map((m) => Number(m[1])),
        serial: pem === undefined ? undefined : new X509Certificate(pem).serialNumber,
        sniAcknowledged: /TLS server extension "server name"/.test(output),
      })
    })
  })
}

const VERSIONS = [
  { name: 'TLS 1.2', flag: '-tls1_2', version: 'TLSv1.2' },
  { name: 'TLS 1.3', flag: '-tls1_3', version: 'TLSv1.3' },
] as const

/** Waits until new handshakes get the certificate with `serial` (a reload takes ~250 ms). */
async function served(port: number, serial: string): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if ((await servedSerial(port, ca.cert)) === serial) return true
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return false
}

t.test('ticket lifetime: a client is told TICKET_LIFETIME_S (5 minutes) in TLS 1.2 and 1.3, and still after a certificate reload', async (t) => {
  t.equal(TICKET_LIFETIME_S, 300, 'what docs/configuration.md says: 5 minutes')
  const { proxy, secret, dir } = await tlsProxy(t)
  const told = async (when: string) => {
    for (const v of VERSIONS) {
      const r = await s_client(proxy.port, [v.flag, '-servername', 'localhost'], { ticket: join(dir, 'hint.pem') })
      t.same(r.handshakes, [`New, ${v.version}`], `${v.name} ${when}: a full handshake`) || t.comment(r.output)
      t.ok(r.hints.length > 0, `${v.name} ${when}: a ticket was sent`)
      t.same([...new Set(r.hints)], [TICKET_LIFETIME_S], `${v.name} ${when}: every ticket's lifetime hint is ${TICKET_LIFETIME_S} s (OpenSSL's default would be 7200)`)
    }
  }
  await told('at start')
  const next = serverCert(ca)
  secret.write(next.cert, next.key)
  t.ok(await served(proxy.port, serialOf(next.cert)), 'the reloaded certificate is served')
  await told('after a certificate reload')
})

t.test('resumption: TLS 1.2 tickets are on, TLS 1.3 resumes from its ticket, and a certificate reload ends the tickets out', async (t) => {
  const { proxy, secret, dir } = await tlsProxy(t)
  // TLS 1.2: openssl's own reconnects resume, from the ticket (s_client -reconnect never waits
  // for a TLS 1.3 ticket: its reconnects are all full handshakes, so TLS 1.3 goes by a file)
  const again = await s_client(proxy.port, ['-tls1_2', '-servername', 'localhost', '-reconnect'], { handshakes: 6 })
  t.same(again.handshakes, ['New, TLSv1.2', ...Array<string>(5).fill('Reused, TLSv1.2')], 'TLS 1.2: five reconnects resumed') || t.comment(again.output)
  t.match(again.output, /TLS session ticket:\n\s+0000 -/, 'TLS 1.2: from a session ticket (there is no session ID cache)')
  const before: Record<string, string> = {}
  for (const v of VERSIONS) {
    before[v.version] = join(dir, `${v.version}-before.pem`)
    const first = await s_client(proxy.port, [v.flag, '-servername', 'localhost'], { ticket: before[v.version]! })
    t.same(first.handshakes, [`New, ${v.version}`], `${v.name}: a full handshake first`) || t.comment(first.output)
    const resumed = await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', before[v.version]!])
    t.same(resumed.handshakes, [`Reused, ${v.version}`], `${v.name}: resumed from its ticket`) || t.comment(resumed.output)
  }
  const next = serverCert(ca)
  secret.write(next.cert, next.key)
  t.ok(await served(proxy.port, serialOf(next.cert)), 'the reloaded certificate is served')
  for (const v of VERSIONS) {
    const after = join(dir, `${v.version}-after.pem`)
    const stale = await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', before[v.version]!], { ticket: after })
    t.same(stale.handshakes, [`New, ${v.version}`], `${v.name}: a ticket from before the reload opens nothing (the new context has its own key)`)
    t.equal(stale.serial, serialOf(next.cert), `${v.name}: and the full handshake gets the reloaded certificate`)
    const resumed = await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', after])
    t.same(resumed.handshakes, [`Reused, ${v.version}`], `${v.name}: a ticket from after the reload resumes`) || t.comment(resumed.output)
  }
})

t.test('ticket key rotation: tickets sealed before it open nothing, in TLS 1.2 and 1.3; tickets sealed after it resume', async (t) => {
  const clock = fakeClock()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  const up = await fakeUpstream().listen()
  const proxy = await startProxy(up.url, { listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } } }, { clock })
  t.teardown(async () => {
    await proxy.close()
    await up.close()
  })
  for (const v of VERSIONS) {
    const before = join(dir, `${v.version}-before.pem`)
    const after = join(dir, `${v.version}-after.pem`)
    await s_client(proxy.port, [v.flag, '-servername', 'localhost'], { ticket: before })
    t.same((await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', before])).handshakes, [`Reused, ${v.version}`], `${v.name}: resumed under the key of the hour`)
    clock.advance(TICKET_KEY_ROTATION_MS)
    t.same((await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', before], { ticket: after })).handshakes, [`New, ${v.version}`], `${v.name}: after the rotation the old ticket opens nothing`)
    t.same((await s_client(proxy.port, [v.flag, '-servername', 'localhost', '-sess_in', after])).handshakes, [`Reused, ${v.version}`], `${v.name}: a ticket sealed with the new key resumes`)
  }
})

t.test('SNI: a client with a name and one without are both served the certificate in force (before and after a reload); the name is not acknowledged', async (t) => {
  const { proxy, secret } = await tlsProxy(t)
  const check = async (serial: string, when: string) => {
    for (const v of VERSIONS) {
      for (const [who, args] of [
        ['with SNI shop.example', ['-servername', 'shop.example']],
        ['without SNI', ['-noservername']],
      ] as const) {
        const r = await s_client(proxy.port, [v.flag, ...args])
        t.same(r.handshakes, [`New, ${v.version}`], `${v.name} ${who} ${when}: served`) || t.comment(r.output)
        t.equal(r.serial, serial, `${v.name} ${who} ${when}: the certificate in force`)
        t.notOk(r.sniAcknowledged, `${v.name} ${who} ${when}: no server_name extension back`)
      }
    }
  }
  await check(serialOf(server.cert), 'at start')
  const next = serverCert(ca)
  secret.write(next.cert, next.key)
  t.ok(await served(proxy.port, serialOf(next.cert)), 'the reloaded certificate is served')
  await check(serialOf(next.cert), 'after a reload')
})
