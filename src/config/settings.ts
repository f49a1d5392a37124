// What the running proxy does with config values, without the schema library: zod and the YAML
// parser stay in the thread that reads and validates the file (config/worker.ts), so nothing here
// may import them, nor config/schema.ts and config/load.ts (test/architecture.test.ts holds it).
// config/schema.ts uses these functions in its checks, so they name the parts of the config they
// read by shape, not by schema.ts's types (which would make an import cycle).
import { isIP } from 'node:net'

/** A mirror setting, as far as the functions below read it. */
interface MirrorOf {
  readonly backend: string
}

/** The backends and the mirrors, top-level and per route. */
interface BackendsAndMirrors {
  readonly backends: readonly { readonly name: string; readonly weight: number }[]
  readonly mirror?: MirrorOf | undefined
  readonly routes: readonly { readonly mirror?: MirrorOf | false | undefined }[]
}

/** A route's retry: any field of the top level's, backoff and budget field by field. */
type RouteRetry<R> = { readonly [K in keyof R]?: R[K] extends object ? { readonly [J in keyof R[K]]?: R[K][J] | undefined } : R[K] | undefined }

/** `host:port`, `[v6]:port` as host and port, or null; port 0 means "any free port" (tests). */
export function parseAddress(address: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(address)
  if (!m) return null
  const port = Number(m[3])
  if (port > 65535) return null
  return { host: (m[1] ?? m[2]) as string, port }
}

/** Whether a backend's health holds the pod's readiness: it gets traffic and gates it. */
export function gatesReadiness(b: { weight: number; gatesReadiness: boolean }): boolean {
  return b.weight > 0 && b.gatesReadiness
}

/** A route's retry policy: its own fields over the top level's, backoff and budget field by field. */
export function routeRetry<R extends { backoff: object; budget: object }>(top: R, route: RouteRetry<R> | undefined): R {
  if (route === undefined) return top
  const defined = <T extends object>(o: T | undefined): Partial<T> => Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>
  return {
    ...top,
    ...defined(route),
    backoff: { ...top.backoff, ...defined(route.backoff) },
    budget: { ...top.budget, ...defined(route.budget) },
  }
}

/** A route's fault or mirror: its own when it has one (false: none), else the top level's. */
export function routeSetting<T extends object>(top: T | undefined, route: T | false | undefined): T | undefined {
  return route === undefined ? top : route === false ? undefined : route
}

/** Backends that take mirrored copies only: named by a mirror, weight 0. */
export function shadowOnlyBackends(config: BackendsAndMirrors): Set<string> {
  const named = [config.mirror, ...config.routes.map((r) => r.mirror)].flatMap((m) => (m ? [m.backend] : []))
  return new Set(named.filter((name) => config.backends.find((b) => b.name === name)?.weight === 0))
}

/** The backend the override header's `always` names: routing.canary, else the second backend
 *  that does not take mirrored copies only (a shadow is never the canary by default). */
export function defaultCanary(config: BackendsAndMirrors & { readonly routing: { readonly canary?: string | undefined } }): string | undefined {
  if (config.routing.canary !== undefined) return config.routing.canary
  const shadows = shadowOnlyBackends(config)
  return config.backends.slice(1).find((b) => !shadows.has(b.name))?.name
}

/** `backends[0].url` from ['backends', 0, 'url']. */
export function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${String(key)}` : String(key)), '')
}

/** The validated config is frozen: no layer can change what another reads. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}

/** What is wrong with a listener.trustedProxies entry, or undefined: `10.0.0.0/8`, `fd00::/8`,
 *  `10.1.2.3`. */
export function cidrProblem(cidr: string): string | undefined {
  const [address, bits, extra] = cidr.split('/')
  const family = isIP(address ?? '')
  if (family === 0 || extra !== undefined) return 'must be an address or a CIDR, e.g. 10.0.0.0/8 or fd00::/8'
  if (bits === undefined) return undefined
  const max = family === 4 ? 32 : 128
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `the prefix length must be 0-${max}`
  return undefined
}
