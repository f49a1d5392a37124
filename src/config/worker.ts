// The running proxy reads and validates its config file in a worker thread. The schema library
// (zod: its code and the built schema, 4 MiB of heap) and the YAML parser are then loaded in the
// worker's own heap, which is freed when the worker exits, instead of staying in the proxy's for
// its whole life: 4 MiB of idle RSS, a sixth of what the proxy adds to a bare Node forwarder
// (docs/performance.md, "Memory"). Start-up and each reload pay about 30 ms for the thread.
//
// This file is both sides: imported, it exports loadConfigInWorker; run as the worker, it calls
// loadConfig and posts the outcome back. `sidecar-proxy validate` and the tests call loadConfig
// directly.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { ConfigError, isConfigError } from '../errors.js'
import type { ConfigOverrides } from './load.js'
import type { Config } from './schema.js'
import { deepFreeze } from './settings.js'

/** What the worker is given (as workerData) and what it answers (one message). */
interface Job {
  readonly loadConfig: { file: string | undefined; overrides: ConfigOverrides }
}
type Answer = { config: Config } | { invalid: { source: string; problems: string[] } } | { failed: string }

/** loadConfig(file, overrides), run in a worker thread: the same Config, or the same ConfigError. */
export function loadConfigInWorker(file: string | undefined, overrides: ConfigOverrides = {}): Promise<Config> {
  return new Promise((resolve, reject) => {
    const job: Job = { loadConfig: { file, overrides } }
    let answered = false
    new Worker(new URL(import.meta.url), { workerData: job })
      .once('message', (answer: Answer) => {
        answered = true
        if ('config' in answer) resolve(deepFreeze(answer.config))
        else if ('invalid' in answer) reject(new ConfigError(answer.invalid.source, answer.invalid.problems))
        else reject(new Error(`reading the config failed: ${answer.failed}`))
      })
      .once('error', reject)
      .once('exit', (code) => answered || reject(new Error(`the config reader stopped (exit code ${code}) without an answer`)))
  })
}

if (!isMainThread && (workerData as Partial<Job> | null)?.loadConfig) {
  const { file, overrides } = (workerData as Job).loadConfig
  const { loadConfig } = await import('./load.js')
  let answer: Answer
  try {
    answer = { config: await loadConfig(file, overrides) }
  } catch (err) {
    answer = isConfigError(err) ? { invalid: { source: err.source, problems: [...err.problems] } } : { failed: (err as Error).message }
  }
  // a frozen config clones as plain objects; the main thread freezes its copy again
  parentPort!.postMessage(answer)
}
