// `sidecar-proxy certs --out DIR [--hosts a,b,c] [--days N] [--force]`: a development CA and a
// server certificate signed by it, for trying the proxy over TLS. Not for production: the CA key
// sits next to the certificates. Existing files are never replaced without --force (the
// repository's own certs/ included).
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createCa, issueCertificate } from '../certs/generate.js'
import { StartupError } from '../errors.js'
import type { Io } from './io.js'
import { UsageError, parseFlags } from './usage.js'

const DEFAULT_HOSTS = ['localhost', '127.0.0.1', '::1']
const DEFAULT_DAYS = 30

export async function certsCommand(argv: readonly string[], io: Io): Promise<number> {
  const values = parseFlags(
    argv,
    { out: { type: 'string' }, hosts: { type: 'string' }, days: { type: 'string' }, force: { type: 'boolean' } },
    'certs', io.out,
  )
  if (values === null) return 0
  if (values.out === undefined) throw new UsageError('certs needs --out DIR', 'certs')
  const hosts = values.hosts === undefined ? DEFAULT_HOSTS : values.hosts.split(',').map((h) => h.trim()).filter(Boolean)
  if (hosts.length === 0) throw new UsageError('--hosts needs at least one name or address', 'certs')
  const days = values.days === undefined ? DEFAULT_DAYS : Number(values.days)
  if (!Number.isInteger(days) || days < 1 || days > 825) throw new UsageError('--days must be a whole number from 1 to 825', 'certs')

  const ca = createCa('sidecar-proxy development CA (not for production)', days)
  const server = issueCertificate(ca, { commonName: hosts[0]!, hosts, usage: 'server', days })
  const out = values.out
  await mkdir(out, { recursive: true })
  const files: Array<[string, string, number]> = [
    ['ca.crt', ca.cert, 0o644],
    ['ca.key', ca.key, 0o600],
    ['tls.crt', server.cert, 0o644],
    ['tls.key', server.key, 0o600],
  ]
  // 'wx' fails on a file that exists, atomically: nothing is replaced by accident
  const flag = values.force ? 'w' : 'wx'
  for (const [name, pem, mode] of files) {
    await writeFile(join(out, name), pem, { mode, flag }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err
      throw new StartupError('would_overwrite', `${join(out, name)} exists; pass --force to replace the certificates in ${out}`)
    })
  }
  const localhost = hosts.includes('localhost')
  io.out(
    [
      `wrote ${files.map(([name]) => join(out, name)).join(', ')}`,
      `server certificate for ${hosts.join(', ')}, valid ${days} days; development only`,
      `run:  sidecar-proxy --tls-cert ${join(out, 'tls.crt')} --tls-key ${join(out, 'tls.key')}`,
      ...(localhost ? [`try:  curl --cacert ${join(out, 'ca.crt')} https://localhost:8443/`] : []),
    ].join('\n'),
  )
  io.err(
    `sidecar-proxy certs: ${join(out, 'ca.key')} can sign certificates that every client trusting ${join(out, 'ca.crt')} accepts: ` +
      'keep it private and out of version control (delete it if you will not sign more)',
  )
  return 0
}
