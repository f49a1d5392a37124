// `sidecar-proxy [flags]`: load the config, start the proxy, reload the config file when it
// changes or on SIGHUP, and drain on SIGTERM/SIGINT or when the admin port is asked to
// (POST /drain, POST /quitquitquit); then exit.
import { parseArgs } from 'node:util'
import { startApp } from '../app.js'
import { isConfigError, loadConfig } from '../config/load.js'
import { createLogger } from '../log.js'
import type { Io } from '../main.js'
import { UsageError } from './usage.js'

const OPTIONS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  upstream: { type: 'string' },
  admin: { type: 'string' },
  plaintext: { type: 'boolean' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
} as const

export async function runCommand(argv: readonly string[], io: Io): Promise<number> {
  const values = parseFlags(argv)
  const file = values.config ?? (process.env.SIDECAR_CONFIG || undefined)
  const overrides = {
    listen: values.listen,
    upstream: values.upstream,
    admin: values.admin,
    plaintext: values.plaintext,
    tlsCert: values['tls-cert'],
    tlsKey: values['tls-key'],
  }
  let config
  try {
    config = await loadConfig(file, overrides)
  } catch (err) {
    if (isConfigError(err)) {
      io.err(`sidecar-proxy: ${err.message}`)
      return 2
    }
    throw err
  }

  const logger = createLogger(config.log)
  let requestStop!: (stop: { reason: string; immediate: boolean }) => void
  const stopRequested = new Promise<{ reason: string; immediate: boolean }>((resolve) => (requestStop = resolve))
  const onSignal = (signal: NodeJS.Signals) => requestStop({ reason: signal, immediate: false })
  process.on('SIGTERM', onSignal).on('SIGINT', onSignal)
  let app
  try {
    app = await startApp(config, {
      logger,
      requestStop: (reason, immediate) => requestStop({ reason, immediate }),
      ...(file !== undefined && { configFile: { path: file, load: () => loadConfig(file, overrides) } }),
    })
  } catch (err) {
    process.off('SIGTERM', onSignal).off('SIGINT', onSignal)
    if ((err as { code?: string }).code === 'TLS_MATERIAL_INVALID') {
      // a certificate the config points at cannot be used: a config problem, said plainly
      io.err(`sidecar-proxy: listener.tls: ${(err as Error).message}`)
      return 2
    }
    const bind = bindFailure(err)
    if (bind) io.err(`sidecar-proxy: ${bind}`) // said plainly too: it is the usual first-run problem
    logger.fatal({ err }, 'sidecar-proxy could not start')
    return 1
  }
  const onHangup = () => void app.reload('SIGHUP')
  process.on('SIGHUP', onHangup)
  const { reason, immediate } = await stopRequested
  process.off('SIGTERM', onSignal).off('SIGINT', onSignal).off('SIGHUP', onHangup)
  // A second signal during the drain stops at once.
  const forced = new Promise<number>((resolve) => {
    const force = (signal: string) => {
      logger.warn({ signal }, 'second signal: stopping now')
      resolve(1)
    }
    process.once('SIGTERM', force).once('SIGINT', force)
  })
  return Promise.race([app.close(reason, immediate ? 0 : config.drain.delayMs).then(() => 0), forced])
}

function parseFlags(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

const BIND_ERRORS: Record<string, string> = {
  EADDRINUSE: 'the port is in use',
  EACCES: 'permission denied (ports below 1024 need a privilege the proxy does not ask for)',
  EADDRNOTAVAIL: 'no such address on this host',
}

/** A listener or admin port that could not be bound, said with the setting that moves it. */
function bindFailure(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number; server?: string }
  if (e.syscall !== 'listen' || e.code === undefined || !(e.code in BIND_ERRORS)) return undefined
  const setting = e.server === 'admin server' ? 'admin.address (--admin)' : 'listener.address (--listen)'
  return `cannot listen on ${e.address}:${e.port} for ${setting}: ${BIND_ERRORS[e.code]}`
}
