// Reading a config file, applying command-line overrides and validating it once. A failure lists
// every problem with the path of the bad key, e.g. `backends[0].url: must be an http:// URL`.
import { readFile } from 'node:fs/promises'
import type { z } from 'zod'
import { ConfigError } from '../errors.js'
import { nearest } from './nearest.js'
import { configSchema, type Config } from './schema.js'
import { deepFreeze, formatPath } from './settings.js'

/** Values given on the command line; each replaces one key of the file. */
export interface ConfigOverrides {
  listen?: string
  upstream?: string
  admin?: string
  plaintext?: boolean
  tlsCert?: string
  tlsKey?: string
}

/** Reads YAML or JSON (JSON is YAML). A missing, unreadable or unparsable file is a ConfigError. */
async function readConfigFile(file: string): Promise<unknown> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`])
  }
  try {
    // JSON is YAML, and JSON.parse spares a JSON config the YAML parser's memory (about 9 MiB)
    return parseJson(text) ?? (await import('yaml')).parse(text) ?? {}
  } catch (err) {
    // yaml's message ends with " at line L, column C:" and a code frame; said in one line
    const e = err as Error & { linePos?: Array<{ line: number; col: number }> }
    const at = e.linePos?.[0]
    const what = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '').replace(/:$/, '')
    throw new ConfigError(file, [`not valid YAML or JSON${at ? ` (line ${at.line}, column ${at.col})` : ''}: ${what}`])
  }
}

export function applyOverrides(raw: unknown, o: ConfigOverrides): unknown {
  const cfg = isRecord(raw) ? structuredClone(raw) : raw
  if (!isRecord(cfg)) return cfg // validation reports "expected object"
  const section = (key: string): Record<string, unknown> => {
    if (!isRecord(cfg[key])) cfg[key] = {}
    return cfg[key] as Record<string, unknown>
  }
  if (o.listen !== undefined) section('listener').address = o.listen
  if (o.admin !== undefined) section('admin').address = o.admin
  if (o.plaintext) section('listener').tls = false
  if (o.tlsCert !== undefined || o.tlsKey !== undefined) {
    const listener = section('listener')
    const tls = isRecord(listener.tls) ? listener.tls : {}
    listener.tls = { ...tls, certFile: o.tlsCert ?? tls.certFile, keyFile: o.tlsKey ?? tls.keyFile }
  }
  if (o.upstream !== undefined) {
    // --upstream replaces the URL of the first backend: the app next to the sidecar.
    const backends = Array.isArray(cfg.backends) ? cfg.backends : []
    const first = isRecord(backends[0]) ? backends[0] : { name: 'app' }
    cfg.backends = [{ ...first, url: o.upstream }, ...backends.slice(1)]
  }
  return cfg
}

/** Validates and defaults; throws ConfigError listing every problem. The result is frozen. */
export function validateConfig(raw: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(raw)
  if (!result.success) {
    throw new ConfigError(source, result.error.issues.flatMap((issue) => describe(issue, [])))
  }
  return deepFreeze(result.data)
}

function describe(issue: z.core.$ZodIssue, base: readonly PropertyKey[]): string[] {
  const path = [...base, ...issue.path]
  switch (issue.code) {
    case 'unrecognized_keys': {
      const known = keysAt(configSchema, path)
      return issue.keys.map((k) => {
        const near = nearest(k, known)
        return `${formatPath([...path, k])}: unknown key${near === undefined ? '' : `; did you mean "${near}"?`}`
      })
    }
    case 'invalid_key':
      // a record's key (tracing.otlp.headers' names): the key's own check says what is wrong
      return issue.issues.map((inner) => `${formatPath(path)}: ${inner.message}`)
    case 'invalid_union': {
      // e.g. listener.tls is `false` or an object: report against the branch the value was
      // closest to (the one whose problems lie deepest), not a bare "invalid input".
      const depth = (branch: z.core.$ZodIssue[]) => Math.max(...branch.map((i) => i.path.length))
      const closest = [...issue.errors].sort((a, b) => depth(b) - depth(a))[0]
      if (closest && depth(closest) > 0) return closest.flatMap((i) => describe(i, path))
      break
    }
  }
  const missing = issue.code === 'invalid_type' && issue.message.endsWith('received undefined')
  return [`${formatPath(path) || '(top level)'}: ${missing ? `required (${issue.expected})` : issue.message}`]
}

export async function loadConfig(file: string | undefined, overrides: ConfigOverrides = {}, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const raw = file === undefined ? {} : await readConfigFile(file)
  return validateConfig(withOtelEnv(applyOverrides(raw, overrides), env), file ?? 'defaults and flags')
}

/**
 * OpenTelemetry's standard environment variables fill in what `tracing` leaves unset (they do
 * not turn tracing on: the `tracing` key does). The traces endpoint is taken as it is; the
 * general one gets /v1/traces. Headers are `key=value` pairs, comma-separated, values
 * percent-encoded; a header the file names keeps the file's value.
 */
export function withOtelEnv(raw: unknown, env: NodeJS.ProcessEnv): unknown {
  if (!isRecord(raw) || !isRecord(raw.tracing)) return raw
  const cfg = structuredClone(raw)
  const tracing = cfg.tracing as Record<string, unknown>
  if (!isRecord(tracing.otlp)) tracing.otlp = {}
  const otlp = tracing.otlp as Record<string, unknown>
  const set = (on: Record<string, unknown>, key: string, value: unknown) => {
    if (on[key] === undefined && value !== undefined && value !== '') on[key] = value
  }
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT
  set(otlp, 'endpoint', env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || (base ? `${base.replace(/\/+$/, '')}/v1/traces` : undefined))
  set(otlp, 'protocol', env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL)
  const timeout = env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT || env.OTEL_EXPORTER_OTLP_TIMEOUT
  set(otlp, 'timeoutMs', timeout === undefined || timeout === '' ? undefined : Number(timeout))
  const headers = { ...otelHeaders(env.OTEL_EXPORTER_OTLP_HEADERS), ...otelHeaders(env.OTEL_EXPORTER_OTLP_TRACES_HEADERS) }
  if (Object.keys(headers).length > 0) otlp.headers = { ...headers, ...(isRecord(otlp.headers) ? otlp.headers : {}) }
  set(tracing, 'serviceName', env.OTEL_SERVICE_NAME)
  return cfg
}

/** `api-key=secret,x-team=a%20b` -> { 'api-key': 'secret', 'x-team': 'a b' }; pairs without `=` are skipped. */
export function otelHeaders(value: string | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const pair of (value ?? '').split(',')) {
    const at = pair.indexOf('=')
    if (at <= 0) continue
    const key = pair.slice(0, at).trim().toLowerCase()
    let v = pair.slice(at + 1).trim()
    try {
      v = decodeURIComponent(v)
    } catch {
      // kept as written
    }
    if (key) out[key] = v
  }
  return out
}

/** The keys a config object may have at `path` (list indices step into the element). */
function keysAt(schema: z.core.$ZodType, path: readonly PropertyKey[]): string[] {
  const unwrap = (t: z.core.$ZodType | undefined): z.core.$ZodType | undefined => {
    for (let def = t?._zod.def as { type: string; innerType?: z.core.$ZodType; in?: z.core.$ZodType } | undefined; def; ) {
      const inner = def.type === 'pipe' ? def.in : def.innerType
      if (!inner) return t
      t = inner
      def = t._zod.def as typeof def
    }
    return t
  }
  const objects = (t: z.core.$ZodType | undefined): Array<Record<string, z.core.$ZodType>> => {
    const def = unwrap(t)?._zod.def as { type: string; shape?: Record<string, z.core.$ZodType>; options?: z.core.$ZodType[] } | undefined
    if (def?.type === 'object') return [def.shape!]
    if (def?.type === 'union') return def.options!.flatMap(objects)
    return []
  }
  let at: z.core.$ZodType | undefined = schema
  for (const key of path) {
    const def = unwrap(at)?._zod.def as { type: string; element?: z.core.$ZodType } | undefined
    at = def?.type === 'array' ? def.element : objects(at).find((shape) => typeof key === 'string' && key in shape)?.[key as string]
  }
  return objects(at).flatMap((shape) => Object.keys(shape))
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** The file as JSON, or undefined when it is not JSON (then YAML decides). */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return undefined
  }
}
