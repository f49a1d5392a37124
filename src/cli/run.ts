// `sidecar-proxy [flags]`: load the config, start the proxy, stop gracefully on SIGTERM/SIGINT.
import { parseArgs } from 'node:util'
import { startApp } from '../app.js'
import { isConfigError, loadConfig } from '../config/load.js'
import { createLogger, type Logger } from '../log.js'
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
  let config
  try {
    config = await loadConfig(file, {
      listen: values.listen,
      upstream: values.upstream,
      admin: values.admin,
      plaintext: values.plaintext,
      tlsCert: values['tls-cert'],
      tlsKey: values['tls-key'],
    })
  } catch (err) {
    if (isConfigError(err)) {
      io.err(`sidecar-proxy: ${err.message}`)
      return 2
    }
    throw err
  }

  const logger = createLogger(config.log)
  let app
  try {
    app = await startApp(config, { logger })
  } catch (err) {
    if ((err as { code?: string }).code === 'TLS_MATERIAL_INVALID') {
      // a certificate the config points at cannot be used: a config problem, said plainly
      io.err(`sidecar-proxy: listener.tls: ${(err as Error).message}`)
      return 2
    }
    logger.fatal({ err }, 'sidecar-proxy could not start')
    return 1
  }
  const stopped = await untilSignal(logger)
  logger.info({ signal: stopped }, 'stopping: finishing in-flight requests')
  const forced = new Promise<number>((resolve) => {
    const force = (signal: string) => {
      logger.warn({ signal }, 'second signal: stopping now')
      resolve(1)
    }
    process.once('SIGTERM', force).once('SIGINT', force)
  })
  return Promise.race([app.close().then(() => 0), forced])
}

function parseFlags(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

function untilSignal(logger: Logger): Promise<string> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals) => {
      process.off('SIGTERM', on).off('SIGINT', on)
      resolve(signal)
    }
    process.on('SIGTERM', on).on('SIGINT', on)
    logger.debug('waiting for SIGTERM or SIGINT')
  })
}
