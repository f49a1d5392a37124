// The structure rules of docs/architecture.md, held against the code: no import cycle in src/
// (type-only imports included), and each third-party library behind its one door.
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../src')

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []))
}

interface Imports {
  local: string[]
  packages: string[]
}

/** Every `from '...'` of a file, those that are not `import type` again (`values`: type-only
 *  imports are erased when compiled and load nothing), and every `import('...')` (`lazy`):
 *  relative ones resolved to src files, packages by name. */
function importsOf(file: string): Imports & { values: Imports; lazy: Imports } {
  const text = readFileSync(file, 'utf8')
  const split = (specs: string[]): Imports => ({
    local: specs.filter((s) => s.startsWith('.')).map((s) => resolve(dirname(file), s).replace(/\.js$/, '.ts')),
    packages: specs.filter((s) => !s.startsWith('.') && !s.startsWith('node:')).map((s) => (s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]!)),
  })
  return {
    ...split([...text.matchAll(/^(?:import|export)\b[^'"]*?from\s+'([^']+)'/gm)].map((m) => m[1]!)),
    values: split([...text.matchAll(/^(?:import|export)\b(?! type\b)[^'"]*?from\s+'([^']+)'/gm)].map((m) => m[1]!)),
    lazy: split([...text.matchAll(/\bimport\('([^']+)'\)/g)].map((m) => m[1]!)),
  }
}

const all = files(SRC)
const graph = new Map(all.map((f) => [f, importsOf(f)]))

t.test('no import cycles in src/', async (t) => {
  const cycles: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (file: string, path: string[]) => {
    if (state.get(file) === 'done') return
    if (state.get(file) === 'visiting') {
      cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(SRC, f)).join(' -> '))
      return
    }
    state.set(file, 'visiting')
    for (const next of graph.get(file)?.local ?? []) visit(next, [...path, file])
    state.set(file, 'done')
  }
  for (const f of all) visit(f, [])
  t.same(cycles, [], 'no file imports, through any chain, a file that imports it')
  t.ok(all.length > 30, `${all.length} files read`)
})

t.test('each library has one door', async (t) => {
  const doors: Record<string, (file: string) => boolean> = {
    undici: (f) => f === 'upstream/client.ts',
    'prom-client': (f) => f === 'metrics.ts',
    pino: (f) => f === 'log.ts',
    zod: (f) => f.startsWith('config/'),
    yaml: (f) => f === 'config/load.ts',
    'node-forge': (f) => f.startsWith('certs/'),
    '@opentelemetry/otlp-exporter-base': (f) => f === 'tracing/otlp.ts',
    '@opentelemetry/otlp-transformer': (f) => f === 'tracing/otlp.ts',
  }
  const seen = new Set<string>()
  for (const [file, { packages, lazy }] of graph) {
    const rel = relative(SRC, file)
    for (const pkg of [...packages, ...lazy.packages]) {
      seen.add(pkg)
      t.ok(doors[pkg]?.(rel), `${rel} imports ${pkg}`)
    }
  }
  t.same([...seen].sort(), Object.keys(doors).sort(), 'every runtime dependency is imported, through its door')
})

t.test('what only some runs need is loaded when needed: a running proxy carries neither node-forge, zod, yaml nor tracing\'s libraries', async (t) => {
  // the packages reached through static imports alone from main.ts and the run command (what a
  // running proxy always loads), and those reached through any import at all. zod and yaml are
  // reached through config/worker.ts's import(), which runs in its worker thread.
  const reach = (withLazy: boolean): Set<string> => {
    const files = new Set<string>()
    const packages = new Set<string>()
    const visit = (file: string) => {
      if (files.has(file)) return
      files.add(file)
      const { values, lazy } = graph.get(file)!
      for (const pkg of [...values.packages, ...(withLazy ? lazy.packages : [])]) packages.add(pkg)
      for (const next of [...values.local, ...(withLazy ? lazy.local : [])]) visit(next)
    }
    visit(join(SRC, 'main.ts'))
    visit(join(SRC, 'cli/run.ts'))
    return packages
  }
  const always = reach(false)
  const ever = reach(true)
  for (const pkg of ['node-forge', 'zod', 'yaml', '@opentelemetry/otlp-exporter-base', '@opentelemetry/otlp-transformer']) {
    t.notOk(always.has(pkg), `${pkg}: loaded only on demand`)
    t.ok(ever.has(pkg), `${pkg}: still reachable, through import()`)
  }
  t.ok(always.has('undici') && always.has('pino'), 'the hot path\'s libraries are loaded at start')
})

