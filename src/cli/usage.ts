// What each command takes, said once: the usage texts, and the one parser of flags that answers
// `--help` for every command.
import { readFileSync } from 'node:fs'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { StartupError } from '../errors.js'

const RUN = `  sidecar-proxy [--config FILE] [flags]     run the proxy

Flags (each overrides one key of the config file):
  --config FILE       YAML or JSON config (default: $SIDECAR_CONFIG, else built-in defaults)
  --listen HOST:PORT  listener.address        (default 0.0.0.0:8443)
  --upstream URL      backends[0].url         (default http://127.0.0.1:8080)
  --admin HOST:PORT   admin.address           (default 127.0.0.1:9901)
  --plaintext         listener.tls: false     serve plain HTTP (default: TLS; without a
                                              certificate, an ephemeral self-signed one)
  --tls-cert FILE     listener.tls.certFile
  --tls-key FILE      listener.tls.keyFile`

const SUBCOMMANDS = {
  validate: `  sidecar-proxy validate --config FILE
      Checks a config file as a start would before binding (the schema, and the certificate,
      key and CA files it names), prints every problem with its path; exit 2 if any.`,
  certs: `  sidecar-proxy certs --out DIR [--hosts a,b,c] [--days N] [--force]
      Writes a development CA (ca.crt, ca.key) and a server certificate it signed (tls.crt,
      tls.key) for the hosts (default localhost,127.0.0.1,::1), valid N days (default 30).
      Never replaces existing files without --force. Not for production.`,
  await: `  sidecar-proxy await [--admin URL] [--timeout S] [--shutdown] -- CMD [ARGS...]
      Waits until the proxy is up (its admin /started answers; default admin
      http://127.0.0.1:9901, 120 s), then runs CMD and exits with its code; --shutdown stops
      the proxy afterwards. For clusters without native sidecars.`,
} as const

/** `run` is the proxy itself, the command without a name. */
export type Command = 'run' | keyof typeof SUBCOMMANDS

export const USAGE = `Usage:
${RUN}
  -h, --help          this text (\`sidecar-proxy COMMAND --help\`: that command's)
  --version           the version

Commands:
${Object.values(SUBCOMMANDS).join('\n')}

Exit codes: 0 clean stop, 1 runtime failure, 2 bad usage or invalid config.`

/** A subcommand's usage text; the whole one for running the proxy (the main command). */
function usageOf(command: Command = 'run'): string {
  return command === 'run' ? USAGE : `Usage:\n${SUBCOMMANDS[command]}`
}

/** Bad usage: said with the usage text (the command's own when it has one), exit code 2. */
export class UsageError extends StartupError {
  readonly usage: string
  constructor(message: string, command?: Command) {
    super('usage', message)
    this.usage = usageOf(command)
  }
}

/** The package's version, from the package.json beside dist/ (and src/). */
export function version(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
}

const HELP = { help: { type: 'boolean', short: 'h' } } as const

/**
 * A command's flags, strictly: an unknown flag is a UsageError. Returns null when `--help` was
 * asked for (the command's usage has then been printed).
 */
export function parseFlags<O extends NonNullable<ParseArgsConfig['options']>>(
  args: readonly string[],
  options: O,
  command: Command,
  out: (line: string) => void,
): Flags<O> | null {
  let values: Record<string, unknown>
  try {
    values = parseArgs({ args: [...args], options: { ...options, ...HELP }, strict: true, allowPositionals: false }).values
  } catch (err) {
    throw new UsageError((err as Error).message, command)
  }
  if (values.help) {
    out(usageOf(command))
    return null
  }
  return values as Flags<O>
}

type Flags<O> = { [K in keyof O]?: O[K] extends { type: 'boolean' } ? boolean : string }
