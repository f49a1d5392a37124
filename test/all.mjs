// `npm test`: the unit and scenario suites (with coverage), then the pod simulation, then one line
// that says how it all went, so that the result is the last thing on the screen (each tap run
// ends with its own summary, the pod simulation's with "# No coverage generated").
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const tap = fileURLToPath(new URL('../node_modules/tap/dist/esm/run.mjs', import.meta.url))

/** Runs tap, its output passed through; resolves with its exit code and its last count line. */
function run(name, args) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [tap, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: process.stdout.isTTY ? { ...process.env, FORCE_COLOR: '1' } : process.env,
    })
    let tail = ''
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk)
      tail = (tail + chunk.toString()).slice(-4096)
    })
    child.on('close', (code) => {
      // tap's last line of counts: "# { total: 1612, pass: 1611, skip: 1 }"
      const line = [...tail.matchAll(/# \{ (total: \d+[^}]*)\}/g)].at(-1)?.[1] ?? ''
      const counts = Object.fromEntries([...line.matchAll(/(\w+): (\d+)/g)].map(([, k, v]) => [k, Number(v)]))
      resolve({ name, code: code ?? 1, counts })
    })
  })
}

const suites = [await run('unit and scenario', []), await run('pod simulation', ['--disable-coverage', 'test/e2e/pod.e2e.ts'])]
const sum = (key) => suites.reduce((n, s) => n + (s.counts[key] ?? 0), 0)
const failedSuites = suites.filter((s) => s.code !== 0)
const notes = failedSuites.map((s) => (s.counts.fail ? `${s.name}: ${s.counts.fail} failed` : `${s.name}: exit ${s.code} (coverage below the threshold, or no result)`))
console.log(
  `\nsidecar-proxy tests: ${sum('pass')} passed, ${sum('fail')} failed, ${sum('skip') + sum('todo')} skipped` +
    ` (${suites.map((s) => `${s.name} ${s.counts.total ?? 0}`).join(', ')})` +
    (notes.length ? ` -- FAILED: ${notes.join('; ')}` : ''),
)
process.exit(failedSuites.length === 0 ? 0 : 1)
