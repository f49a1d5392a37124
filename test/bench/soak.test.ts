// The soak harness's short run, in CI: `node bench/soak.mjs --seconds 12` against the built proxy
// (dist/main.js, made by `npm test`'s build step). 12 s is the shortest run that goes through
// every phase: 5 s of warm-up (the floor), 7 s sampled after it, every request kind (the
// rarest, the provoked timeout, weighs 3%: hundreds of them at this rate), the settle, the
// pool's idle timeout (4 s) and the SIGTERM stop. The 10-minute run is `npm run soak`; memory
// flatness needs it, so here the memory figures must only be present, never judged.
// Each assertion names the figure it proves.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

interface Outcome {
  made: number
  '2xx': number
  '4xx': number
  '5xx': number
  aborted: number
  errors: number
  unexpected: number
}
interface Growth {
  warmupEndMiB: number | null
  endMiB: number | null
  growthMiB: number | null
  growthPct: number | null
}
interface Soak {
  pass: boolean
  verdicts: Array<{ name: string; figure: string; pass: boolean | null }>
  plan: { proxyConfig: { backends: Array<{ maxConnections: number }> } }
  figures: {
    requests: number
    memoryJudged: boolean
    rss: Growth
    heap: Growth
    poolBound: number
    upstreamOpenMax: number
    upstreamAccepted: number
    afterSettle: { proxyOpenConnections: number; upstreamInFlight: number; settled: boolean }
    upstreamOpenAfterIdle: number
    alive: boolean
    proxyExit: { code: number | null; signal: string | null }
    provoked504: number
    client5xxOther: number
    proxy5xx: number
  }
  outcomes: Record<string, Outcome>
  samples: Array<{ phase: string; rssMiB: number | null; heapUsedMiB: number | null }>
}

t.test('12 s of mixed load with aborts through the built proxy: every figure of the soak', async (t) => {
  t.ok(existsSync(join(ROOT, 'dist/main.js')), 'dist/main.js is built (npm test builds it first)')
  const out = join(t.testdir(), 'soak.json')
  const started = Date.now()
  // tap's NODE_OPTIONS (its process-info and coverage hooks) would reach the proxy through the
  // harness: the soak measures the proxy as production runs it, so they are left out.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && k !== 'NODE_V8_COVERAGE' && !k.startsWith('_TAPJS_')))
  const child = spawn(process.execPath, ['bench/soak.mjs', '--seconds', '12', '--out', out], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (c: Buffer) => (output += c.toString()))
  child.stderr.on('data', (c: Buffer) => (output += c.toString()))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
  // A soak still running when the test ends (a failure, a timeout) is stopped: SIGINT, on which it
  // kills its proxy as it exits; SIGKILL if it is still there 5 s later.
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGINT')
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
    await exited
    clearTimeout(timer)
  })
  const code = await exited
  t.comment(`soak run took ${((Date.now() - started) / 1000).toFixed(1)} s`)
  t.equal(code, 0, `bench/soak.mjs exits 0 (every verdict passes); its output:\n${output}`)
  if (!existsSync(out)) return void t.fail(`no JSON written at ${out}`)
  const soak = JSON.parse(readFileSync(out, 'utf8')) as Soak
  const f = soak.figures

  // requests of each kind were made, aborts included, and ended as that kind should
  for (const [kind, o] of Object.entries(soak.outcomes)) {
    t.ok(o.made > 0, `requests made of kind ${kind}: ${o.made}`)
    t.equal(o.unexpected, 0, `${kind}: every request ended as its kind should`)
  }
  for (const kind of ['abort-upload', 'abort-download', 'abort-headers']) t.ok(soak.outcomes[kind]!.aborted > 0, `client aborts of kind ${kind}: ${soak.outcomes[kind]!.aborted}`)
  for (const kind of ['get', 'get-delay', 'get-stream', 'post', 'post-large']) t.equal(soak.outcomes[kind]!['2xx'], soak.outcomes[kind]!.made, `${kind}: all 2xx`)
  t.ok(f.provoked504 > 0, `provoked per-try timeouts answered 504: ${f.provoked504}`)
  t.equal(f.client5xxOther, 0, 'no 5xx but the provoked ones, as the client saw them')
  t.equal(f.proxy5xx, f.provoked504, 'no 5xx but the provoked ones, as the proxy counted them')

  // open upstream sockets bounded by the pool
  t.equal(f.poolBound, soak.plan.proxyConfig.backends[0]!.maxConnections, 'the bound is the proxy config\'s backends[0].maxConnections')
  t.ok(f.upstreamOpenMax <= f.poolBound + 1, `upstream open connections max ${f.upstreamOpenMax} <= pool bound ${f.poolBound}, and the health checks' own 1`)
  t.ok(f.upstreamAccepted > f.poolBound, `aborts made the pool replace connections (${f.upstreamAccepted} accepted), so the bound was tested under churn`)

  // after the load, nothing held
  t.equal(f.afterSettle.proxyOpenConnections, 0, 'proxy open connections (sidecar_open_connections) 0 after settle')
  t.equal(f.afterSettle.upstreamInFlight, 0, 'upstream requests in flight 0 after settle')
  t.ok(f.upstreamOpenAfterIdle <= 1, `upstream open connections after the pool's idle timeout: ${f.upstreamOpenAfterIdle} (the health checker's at most)`)
  t.equal(f.alive, true, 'the proxy still answered /live at the end')
  t.same(f.proxyExit, { code: 0, signal: null }, 'the proxy exited 0 on SIGTERM')

  // memory: present, not judged over 12 s
  t.equal(f.memoryJudged, false, 'memory growth is not judged on a 12 s run')
  for (const [name, g] of [['RSS', f.rss], ['heap used', f.heap]] as const) {
    t.ok(Number.isFinite(g.warmupEndMiB) && Number.isFinite(g.endMiB) && Number.isFinite(g.growthMiB) && Number.isFinite(g.growthPct), `${name} at warm-up end and at the end are reported (${g.warmupEndMiB} -> ${g.endMiB} MiB)`)
  }
  t.ok(soak.samples.filter((s) => s.phase === 'load' && s.rssMiB !== null && s.heapUsedMiB !== null).length >= 5, 'memory sampled every second after warm-up')
  t.same(soak.verdicts.filter((v) => v.pass === false), [], 'no verdict failed')
})
