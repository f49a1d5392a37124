// `sidecar-proxy [flags]`: load the config, start the proxy, reload the config file when it
// changes or on SIGHUP, and drain on SIGTERM/SIGINT or when the admin port is asked to
// (POST /drain, POST /quitquitquit); then exit.
import { startApp } from '../app.js'
import { loadConfigInWorker } from '../config/worker.js'
import { StartupError, isStartupError } from '../errors.js'
import { settleAfterStart } from '../lifecycle/settle.js'
import { createLogger } from '../log.js'
import type { Io } from './io.js'
import { parseFlags, version } from './usage.js'

const OPTIONS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  upstream: { type: 'string' },
  admin: { type: 'string' },
  plaintext: { type: 'boolean' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  version: { type: 'boolean' },
} as const

export async function runCommand(argv: readonly string[], io: Io): Promise<number> {
  const values = parseFlags(argv, OPTIONS, 'run', io.out)
  if (values === null) return 0
  if (values.version) {
    io.out(version())
    return 0
  }
  const file = values.config ?? (process.env.SIDECAR_CONFIG || undefined)
  const overrides = {
    listen: values.listen,
    upstream: values.upstream,
    admin: values.admin,
    plaintext: values.plaintext,
    tlsCert: values['tls-cert'],
    tlsKey: values['tls-key'],
  }
  const config = await loadConfigInWorker(file, overrides)

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
      ...(file !== undefined && { configFile: { path: file, load: () => loadConfigInWorker(file, overrides) } }),
    })
  } catch (err) {
    process.off('SIGTERM', onSignal).off('SIGINT', onSignal)
    // The stderr line says it all (a certificate the config points at, a taken port); the
    // stack is for whoever runs at debug.
    logger.debug({ err }, 'sidecar-proxy could not start')
    throw isStartupError(err) ? err : (bindFailure(err) ?? err)
  }
  logger.debug({ ms: Math.round(settleAfterStart()) }, 'start-up memory handed back')
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

const BIND_ERRORS: Record<string, string> = {
  EADDRINUSE: 'the port is in use',
  EACCES: 'permission denied (ports below 1024 need a privilege the proxy does not ask for)',
  EADDRNOTAVAIL: 'no such address on this host',
}

/** A listener or admin port that could not be bound, said with the setting that moves it: the
 *  usual first-run problem. */
function bindFailure(err: unknown): StartupError | undefined {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number; server?: string }
  if (e.syscall !== 'listen' || e.code === undefined || !(e.code in BIND_ERRORS)) return undefined
  const setting = e.server === 'admin server' ? 'admin.address (--admin)' : 'listener.address (--listen)'
  return new StartupError('listen_failed', `cannot listen on ${e.address}:${e.port} for ${setting}: ${BIND_ERRORS[e.code]}`, { cause: err })
}
