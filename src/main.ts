#!/usr/bin/env node
// CLI entry: parse the arguments, dispatch to a subcommand, turn the outcome into an exit code
// (0 clean stop, 1 runtime failure, 2 bad usage or invalid config: errors.ts's exitCodeOf).
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { stdio, type Io } from './cli/io.js'
import { USAGE, UsageError } from './cli/usage.js'
import { exitCodeOf, isStartupError } from './errors.js'

/** Runs one command line. `run` resolves only once the proxy has stopped. Each command's module
 *  is loaded when it runs: a running proxy does not carry the certificate generator's library
 *  (node-forge, about 10 MiB of memory), nor the others' code. */
export async function main(argv: readonly string[], io: Io = stdio): Promise<number> {
  const [first, ...rest] = argv
  try {
    switch (first) {
      case 'validate':
        return await (await import('./cli/validate.js')).validateCommand(rest, io)
      case 'certs':
        return await (await import('./cli/certs.js')).certsCommand(rest, io)
      case 'await':
        return await (await import('./cli/await.js')).awaitCommand(rest, io)
      case 'help':
      case '--help':
      case '-h':
        io.out(USAGE)
        return 0
      default:
        if (first !== undefined && !first.startsWith('-')) throw new UsageError(`unknown command "${first}"`)
        return await (await import('./cli/run.js')).runCommand(argv, io)
    }
  } catch (err) {
    // A start-up error's message is the whole story: one line (the usage text after bad usage).
    if (!isStartupError(err)) throw err
    io.err(`sidecar-proxy: ${err.message}${err instanceof UsageError ? `\n\n${err.usage}` : ''}`)
    return exitCodeOf(err)
  }
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href
if (invokedDirectly) {
  // Exit explicitly: after a forced stop, connections may still hold the event loop open.
  // pino flushes pending log lines on 'exit'.
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`sidecar-proxy: ${(err as Error).stack ?? String(err)}\n`)
      process.exit(exitCodeOf(err))
    },
  )
}
