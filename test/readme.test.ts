// The README's configuration reference is a real config: it must validate, and it must mention
// every key the schema has, so the two cannot drift apart.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { validateConfig } from '../src/config/load.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
const section = readme.slice(readme.indexOf('## Configuration'))
const block = section.slice(section.indexOf('```yaml') + 7, section.indexOf('```', section.indexOf('```yaml') + 7))

function keys(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return []
  return Object.entries(value).flatMap(([k, v]) => [prefix + k, ...keys(v, `${prefix}${k}.`)])
}

t.test('the README config example validates', async (t) => {
  t.doesNotThrow(() => validateConfig(parse(block)))
})

t.test('the README config example names every key of the schema', async (t) => {
  const documented = new Set(keys(parse(block)))
  const defaults = validateConfig({ listener: { tls: { certFile: 'c', keyFile: 'k', clientCaFile: 'ca', clientSubjectHeader: 'x' } } })
  const commented = new Set([...block.matchAll(/#\s*([a-zA-Z]+):/g)].map((m) => m[1]))
  for (const key of keys(defaults)) {
    if (key.startsWith('backends')) continue // a list: checked through its first entry below
    const leaf = key.split('.').at(-1)!
    t.ok(documented.has(key) || commented.has(leaf), `${key} is documented`)
  }
  const firstBackend = new Set(keys(parse(block).backends[0]))
  for (const key of keys(defaults.backends[0])) t.ok(firstBackend.has(key), `backends[].${key} is documented`)
})
