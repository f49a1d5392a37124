// Once the proxy has started, it hands back what start-up grew. Loading the modules grows V8's
// young generation from 1 to 16 MiB (most of what is allocated then survives), and an idle
// process may keep it that way: on Node 24, the image's runtime, V8 does not shrink it when idle,
// so the pod's idle RSS stayed 16 MiB above what the proxy uses. One full, memory-reducing
// collection right after start gives it back (a pause of 10-30 ms, before any request is likely;
// docs/performance.md, "Memory"). On Node 20 the collection is a plain full one, which starts
// V8's memory reducer: that shrinks the young generation some 8 s later.
//
// The collection is V8's `gc` function, which is made only in a fresh context, so the process's
// own global object never gets a `gc`.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

type Gc = (options?: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void

/** Node 22 and later (V8 12) take the options of a memory-reducing collection; Node 20's V8 reads
 *  `{ type: 'major' }` as a young-generation collection, so it gets the plain call (a full one). */
const LAST_RESORT = Number(process.versions.node.split('.')[0]) >= 22

/** One memory-reducing full collection: returns its duration in milliseconds. */
export function settleAfterStart(): number {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as Gc
  setFlagsFromString('--no-expose-gc')
  const started = performance.now()
  if (LAST_RESORT) gc({ type: 'major', execution: 'sync', flavor: 'last-resort' })
  else gc()
  return performance.now() - started
}
