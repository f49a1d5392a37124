// `sidecar-proxy validate --config FILE`: the whole schema, every problem with its path, then the
// files it names, as a start would check them before binding. A valid file prints its version
// (the one GET /config shows once it is loaded), the split it makes and the route table.
import { loadConfig } from '../config/load.js'
import { configVersion } from '../config/reload.js'
import type { Config, FaultConfig, MirrorConfig, RouteConfig } from '../config/schema.js'
import { gatesReadiness } from '../config/settings.js'
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
    io.out(`  ${b.name}  weight ${b.weight} (${share})  ${b.url}${gatesReadiness(b) ? '  gates readiness' : ''}${concurrencyOf(b.concurrency)}`)
  }
  if (config.tracing) {
    const { otlp, sampleRatio, serviceName } = config.tracing
    io.out(`  tracing: ${otlp.protocol} to ${otlp.endpoint}, sampleRatio ${sampleRatio}, service ${serviceName}`)
  }
  const top = [...describeFaultAndMirror(config.fault, config.mirror)]
  if (config.routes.length > 0) {
    io.out('routes (first match wins):')
    for (const r of config.routes) io.out(`  ${r.name}  ${describeMatch(r.match)}${describePolicy(r, config)}`)
    io.out(`  default  every other request: the top-level settings${top.length === 0 ? '' : `  -> ${top.join(', ')}`}`)
  } else if (top.length > 0) io.out(`every request: ${top.join(', ')}`)
  return 0
}

/** `POST,PUT /upload/*`, `/login`, `~^/users/[0-9]+$`, plus the headers; "every request" when empty. */
function describeMatch(m: RouteConfig['match']): string {
  const path = m.pathPrefix !== undefined ? `${m.pathPrefix}*` : m.path ?? (m.pathRegex !== undefined ? `~${m.pathRegex}` : undefined)
  const parts = [m.methods?.join(','), path, ...Object.entries(m.headers ?? {}).map(([name, v]) => `${name}: ${typeof v === 'string' ? v : `~${v.regex}`}`)]
  const said = parts.filter((p) => p !== undefined).join(' ')
  return said === '' ? 'every request' : said
}

/** `fault: delay 100 ms (5%), abort 503 (1%), by header`, `mirror 10% to shadow (64 at once)`. */
function describeFaultAndMirror(fault: FaultConfig | false | undefined, mirror: MirrorConfig | false | undefined): string[] {
  const out: string[] = []
  if (fault) {
    const parts = [
      fault.delay && `delay ${fault.delay.ms} ms (${fault.delay.percent}%)`,
      fault.abort && `abort ${fault.abort.status}${fault.abort.grpcStatus === undefined ? '' : ` grpc ${fault.abort.grpcStatus}`} (${fault.abort.percent}%)`,
      fault.headerControl && 'by header',
    ]
    out.push(`fault: ${parts.filter(Boolean).join(', ')}`)
  }
  if (mirror) out.push(`mirror ${mirror.percent}% to ${mirror.backend} (${mirror.maxInFlight} at once)`)
  return out
}

function describePolicy(r: RouteConfig, config: { fault?: FaultConfig | undefined; mirror?: MirrorConfig | undefined }): string {
  const out: string[] = []
  if (r.direct) out.push(`answers ${r.direct.status} itself`)
  if (r.timeoutMs !== undefined) out.push(r.timeoutMs === 0 ? 'no timeout' : `timeout ${r.timeoutMs} ms`)
  if (r.retry?.attempts !== undefined) out.push(`attempts ${r.retry.attempts}`)
  if (r.limits?.maxBodyBytes !== undefined) out.push(`body up to ${r.limits.maxBodyBytes} bytes`)
  if (r.weights) out.push(`weights ${Object.entries(r.weights).map(([b, w]) => `${b}=${w}`).join(' ')}`)
  if (r.rateLimit) out.push(`${r.rateLimit.requestsPerSecond}/s burst ${r.rateLimit.burst} per ${r.rateLimit.key}`)
  out.push(...describeFaultAndMirror(r.fault, r.mirror))
  if (r.fault === false && config.fault) out.push('no fault')
  if (r.mirror === false && config.mirror) out.push('no mirror')
  return out.length === 0 ? '' : `  -> ${out.join(', ')}`
}

/** A backend's concurrency limit as validate says it, or nothing without one. */
function concurrencyOf(c: Config['backends'][number]['concurrency']): string {
  if (c === undefined) return ''
  const limit = c.adaptive ? `adaptive ${c.adaptive.min}-${c.adaptive.max}` : `${c.fixed}`
  return `  concurrency ${limit}, wait ${c.maxWaitMs} ms`
}
