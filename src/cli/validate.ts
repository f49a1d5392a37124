// `sidecar-proxy validate --config FILE`: the whole schema, every problem with its path, then the
// files it names, as a start would check them before binding. A valid file prints its version
// (the one GET /config shows once it is loaded) and the split it makes.
import { loadConfig } from '../config/load.js'
import { configVersion } from '../config/reload.js'
import { gatesReadiness } from '../config/schema.js'
import { loadListenerTlsFiles } from '../server/tls.js'
import { loadBackendTls } from '../upstream/tls.js'
import type { Io } from './io.js'
import { UsageError, parseFlags } from './usage.js'

export async function validateCommand(argv: readonly string[], io: Io): Promise<number> {
  const values = parseFlags(argv, { config: { type: 'string' } }, 'validate', io.out)
  if (values === null) return 0
  const file = values.config
  if (file === undefined) throw new UsageError('validate needs --config FILE', 'validate')
  const config = await loadConfig(file)
  if (config.listener.tls !== false) await loadListenerTlsFiles(config.listener.tls)
  await loadBackendTls(config.backends)
  const total = config.backends.reduce((sum, b) => sum + b.weight, 0)
  io.out(`${file}: valid, version ${configVersion(config)}`)
  for (const b of config.backends) {
    const share = `${Math.round((b.weight / total) * 1000) / 10}%`
    io.out(`  ${b.name}  weight ${b.weight} (${share})  ${b.url}${gatesReadiness(b) ? '  gates readiness' : ''}`)
  }
  if (config.tracing) {
    const { otlp, sampleRatio, serviceName } = config.tracing
    io.out(`  tracing: ${otlp.protocol} to ${otlp.endpoint}, sampleRatio ${sampleRatio}, service ${serviceName}`)
  }
  return 0
}
