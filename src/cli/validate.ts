// `sidecar-proxy validate --config FILE`: the whole schema, every problem with its path.
import { parseArgs } from 'node:util'
import { isConfigError, loadConfig } from '../config/load.js'
import type { Io } from '../main.js'
import { UsageError } from './usage.js'

export async function validateCommand(argv: readonly string[], io: Io): Promise<number> {
  let file: string | undefined
  try {
    file = parseArgs({ args: [...argv], options: { config: { type: 'string' } }, strict: true }).values.config
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (file === undefined) throw new UsageError('validate needs --config FILE')
  try {
    const config = await loadConfig(file)
    io.out(`${file}: valid (${config.backends.length} backend${config.backends.length === 1 ? '' : 's'})`)
    return 0
  } catch (err) {
    if (isConfigError(err)) {
      io.err(`sidecar-proxy: ${err.message}`)
      return 2
    }
    throw err
  }
}
