// The pino logger: JSON lines on stdout, ISO timestamps. The only module that imports pino.
import { pino, type DestinationStream, type Logger } from 'pino'

export type { Logger }

export interface LogOptions {
  level: string
}

/**
 * `SIDECAR_LOG_LEVEL` overrides the configured level. Writes are asynchronous (no blocking
 * write per line on the hot path, lines still go out as soon as the loop is free); pino flushes
 * what is pending synchronously when the process exits. Tests pass their own destination.
 */
export function createLogger(opts: LogOptions, destination?: DestinationStream): Logger {
  const dest = destination ?? pino.destination({ dest: 1, sync: false })
  return pino(
    {
      level: process.env.SIDECAR_LOG_LEVEL || opts.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  )
}
