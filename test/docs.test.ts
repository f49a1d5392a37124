// The reference pages in docs/ are held against the code, so the two cannot drift apart: the
// configuration example is a real config naming every key of the schema, the error table is
// the catalogue, and the metrics table names every metric the proxy defines.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { validateConfig } from '../src/config/load.js'
import { ERRORS, STARTUP_ERRORS } from '../src/errors.js'
import { createMetrics } from '../src/metrics.js'

const doc = (name: string) => readFileSync(new URL(`../docs/${name}`, import.meta.url), 'utf8')

const configuration = doc('configuration.md')
const block = configuration.slice(configuration.indexOf('```yaml') + 7, configuration.indexOf('```', configuration.indexOf('```yaml') + 7))

function keys(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return []
  return Object.entries(value).flatMap(([k, v]) => [prefix + k, ...keys(v, `${prefix}${k}.`)])
}

/** The rows of the first Markdown table after `heading` (or in the whole page): its cells. */
function table(page: string, heading?: string): string[][] {
  const from = heading === undefined ? 0 : page.indexOf(heading)
  const lines = page.slice(from).split('\n')
  const start = lines.findIndex((l) => l.startsWith('| '))
  const rows: string[][] = []
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break
    rows.push(line.split('|').slice(1, -1).map((c) => c.trim()))
  }
  return rows
}

t.test('the configuration example validates', async (t) => {
  t.doesNotThrow(() => validateConfig(parse(block)))
})

t.test('the configuration example names every key of the schema', async (t) => {
  const documented = new Set(keys(parse(block)))
  const defaults = validateConfig({ listener: { tls: { certFile: 'c', keyFile: 'k', clientCaFile: 'ca', clientSubjectHeader: 'x' } }, tracing: {} })
  const commented = new Set([...block.matchAll(/#\s*([a-zA-Z]+):/g)].map((m) => m[1]))
  for (const key of keys(defaults)) {
    if (key.startsWith('backends')) continue // a list: checked through its first entry below
    const leaf = key.split('.').at(-1)!
    t.ok(documented.has(key) || commented.has(leaf), `${key} is documented`)
  }
  const firstBackend = new Set(keys(parse(block).backends[0]))
  for (const key of keys(defaults.backends[0])) t.ok(firstBackend.has(key), `backends[].${key} is documented`)
})

t.test('the error table is the catalogue: every code, its status, nothing else', async (t) => {
  const rows = table(doc('errors.md'))
  const documented = Object.fromEntries(rows.map(([code, status]) => [code!.replace(/`/g, ''), Number(status)]))
  t.same(documented, Object.fromEntries(Object.entries(ERRORS).map(([code, e]) => [code, e.status])))
  const exits = table(doc('errors.md'), '## Exit codes')
  t.same(
    Object.fromEntries(exits.map(([code, exit]) => [code!.replace(/`/g, ''), Number(exit)])),
    Object.fromEntries(Object.entries(STARTUP_ERRORS).map(([code, e]) => [code, e.exitCode])),
    'and the start-up errors with their exit codes',
  )
})

t.test('the metrics table names every metric the proxy defines', async (t) => {
  const documented = new Set(table(doc('metrics.md')).map(([name]) => name!.replace(/`/g, '')))
  const defined = (await createMetrics().registry.getMetricsAsJSON()).map((m) => m.name).filter((n) => n.startsWith('sidecar_'))
  t.same([...documented].sort(), defined.sort())
})

t.test('every link between the pages leads to a page that exists', async (t) => {
  const pages = ['README.md', ...['architecture', 'configuration', 'protocols', 'requests', 'errors', 'admin', 'metrics', 'benchmarks', 'performance', 'demo', 'hostile-input', 'tracing', 'mirroring-and-faults'].map((p) => `docs/${p}.md`)]
  for (const page of pages) {
    const text = readFileSync(new URL(`../${page}`, import.meta.url), 'utf8')
    for (const [, target] of text.matchAll(/\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)/g)) {
      const resolved = new URL(target!, new URL(`../${page}`, import.meta.url))
      t.doesNotThrow(() => readFileSync(resolved), `${page} -> ${target}`)
    }
  }
})

t.test('the fault injection example validates and holds what it describes', async (t) => {
  const page = doc('mirroring-and-faults.md')
  const start = page.indexOf('```yaml', page.indexOf('## Fault injection')) + 7
  const example = validateConfig(parse(page.slice(start, page.indexOf('```', start))))
  t.match(example.fault, { delay: { ms: 200, percent: 5 }, abort: { status: 503, percent: 0.5 }, headerControl: false })
  t.equal(example.routes.find((r) => r.name === 'checkout')!.fault, false)
  t.match(example.routes.find((r) => r.name === 'search')!.fault, { abort: { grpcStatus: 14 }, headerControl: true })
})

t.test('the mirroring example validates and holds what it describes', async (t) => {
  const page = doc('mirroring-and-faults.md')
  const start = page.indexOf('```yaml', page.indexOf('## Mirroring')) + 7
  const example = validateConfig(parse(page.slice(start, page.indexOf('```', start))))
  t.same(example.mirror, { backend: 'shadow', percent: 10, maxInFlight: 64 })
  t.match(example.backends[1], { name: 'shadow', weight: 0, gatesReadiness: false })
  t.equal(example.routes.find((r) => r.name === 'payments')!.mirror, false)
})

t.test('the Routes example validates and holds the cases it describes', async (t) => {
  const from = configuration.indexOf('## Routes')
  const start = configuration.indexOf('```yaml', from) + 7
  const example = validateConfig(parse(configuration.slice(start, configuration.indexOf('```', start))))
  const route = (name: string) => example.routes.find((r) => r.name === name)
  t.match(route('internal'), { direct: { status: 404 } })
  t.ok(route('upload')!.limits!.maxBodyBytes! > example.limits.maxBodyBytes, 'upload: a larger body cap')
  t.equal(route('long-poll')!.timeoutMs, 0)
  t.equal(route('payments')!.retry!.attempts, 1)
  t.same(route('admin')!.weights, { app: 1 })
  t.match(route('login'), { rateLimit: { key: 'client' } })
})
