// Live reload of the config file (the ConfigMap): what may change without a restart, and the
// version a config is known by. A reloaded file is validated whole before anything changes; the
// caller (app.ts) then swaps it in. Settings bound to sockets the process already holds cannot
// change live: they are reported, and the running value stays in force until the next restart.
import { createHash } from 'node:crypto'
import { deepFreeze, formatPath } from './load.js'
import type { Config } from './schema.js'

/** Paths whose value is fixed at start: the listening sockets and the server's parser limits. */
const RESTART_ONLY: ReadonlyArray<readonly string[]> = [
  ['listener'],
  ['admin'],
  ['limits', 'maxHeaderBytes'],
  ['limits', 'maxConcurrentStreams'],
]

/** The reloaded config as it will run: `next`, with the restart-only settings of `running`,
 *  and the paths of those settings that the file changed (to report). */
export function effectiveConfig(running: Config, next: Config): { config: Config; pendingRestart: string[] } {
  const pendingRestart: string[] = []
  const config = structuredClone(next) as Record<string, unknown>
  for (const path of RESTART_ONLY) {
    const was = get(running, path)
    if (JSON.stringify(was) !== JSON.stringify(get(next, path))) pendingRestart.push(formatPath(path))
    const parent = get(config, path.slice(0, -1)) as Record<string, unknown>
    parent[path.at(-1)!] = structuredClone(was)
  }
  return { config: deepFreeze(config) as Config, pendingRestart }
}

/** A short stable hash of a config: equal configs, equal versions. */
export function configVersion(config: Config): string {
  return createHash('sha256').update(stableJson(config)).digest('hex').slice(0, 12)
}

function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

function get(value: unknown, path: readonly string[]): unknown {
  return path.reduce<unknown>((v, k) => (v as Record<string, unknown>)[k], value)
}
