// After start, one full collection hands back the young generation start-up grew.
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks'
import { getHeapSpaceStatistics } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { settleAfterStart } from '../../src/lifecycle/settle.js'

const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size

t.test('a full collection, and no gc left behind for anybody', async (t) => {
  // grow the young generation as module loading does: much allocated, most of it kept a while
  let kept: object[] = []
  for (let i = 0; i < 400_000; i++) kept.push({ i, s: `x${i}` })
  kept = []
  const grown = newSpace()
  const majors: number[] = []
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if ((e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors.push(e.duration)
  })
  observer.observe({ entryTypes: ['gc'] })
  const ms = settleAfterStart()
  await new Promise((resolve) => setTimeout(resolve, 50)) // gc entries are delivered asynchronously
  observer.disconnect()
  t.ok(majors.length >= 1, `a full (mark-compact) collection ran: ${majors.length}`)
  t.ok(ms >= 0 && Number.isFinite(ms), 'its duration is returned')
  t.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined', 'the global object has no gc')
  t.equal(runInNewContext('typeof gc'), 'undefined', 'nor does a context made afterwards: the flag is off again')
  const major = Number(process.versions.node.split('.')[0])
  if (major >= 22) t.ok(newSpace() < grown, `Node ${major}: the young generation shrank at once (${grown >> 20} -> ${newSpace() >> 20} MiB)`)
  else t.ok(newSpace() <= grown, `Node ${major}: V8 shrinks the young generation later, through its memory reducer (${grown >> 20} -> ${newSpace() >> 20} MiB)`)
})
