// The export queue with a scripted exporter and the fake clock: batches, the bound, drops
// counted by reason, one export at a time, the flush within a deadline.
import t from 'tap'
import { SERVER, type SpanRecord } from '../../src/tracing/context.js'
import { SpanQueue, type DropReason, type QueueOptions } from '../../src/tracing/queue.js'
import { fakeClock } from '../fixtures/clock.js'

const span = (i: number): SpanRecord => ({
  name: `s${i}`,
  kind: SERVER,
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: i.toString(16).padStart(16, '0'),
  parentSpanId: undefined,
  parentRemote: false,
  traceState: undefined,
  start: 0n,
  end: 1n,
  attributes: {},
  error: false,
})

function setup(opts: Partial<QueueOptions> = {}) {
  const clock = fakeClock()
  const sent: SpanRecord[][] = []
  const pending: Array<{ resolve: () => void; reject: (e: Error) => void }> = []
  const dropped: Record<DropReason, number> = { queue_full: 0, export_failed: 0 }
  const told: string[] = []
  const queue = new SpanQueue(
    { maxQueueSize: 4, maxExportBatchSize: 2, scheduledDelayMs: 1000, ...opts },
    {
      clock,
      send: (spans) =>
        new Promise<void>((resolve, reject) => {
          sent.push(spans)
          pending.push({ resolve, reject })
        }),
      dropped: (reason, n) => (dropped[reason] += n),
      onExportFailure: () => told.push('failing'),
      onExportRecovered: () => told.push('recovered'),
    },
  )
  const settle = async (ok = true) => {
    const p = pending.shift()!
    if (ok) p.resolve()
    else p.reject(new Error('500'))
    for (let i = 0; i < 5; i++) await Promise.resolve()
  }
  return { clock, queue, sent, pending, dropped, told, settle }
}

t.test('a full batch goes at once; a partial one after scheduledDelayMs', async (t) => {
  const { clock, queue, sent, settle } = setup()
  queue.record(span(1))
  t.equal(sent.length, 0)
  clock.advance(999)
  t.equal(sent.length, 0)
  clock.advance(1)
  t.same(sent.map((b) => b.length), [1], 'the delay passed: sent')
  await settle()
  queue.record(span(2))
  queue.record(span(3))
  t.same(sent.map((b) => b.length), [1, 2], 'a full batch: sent at once')
  await settle()
  t.equal(queue.totals.exported, 3)
})

t.test('one export at a time; past maxQueueSize spans are dropped and counted', async (t) => {
  const { queue, sent, dropped, settle } = setup()
  for (let i = 0; i < 8; i++) queue.record(span(i))
  t.equal(sent.length, 1, 'one export under way')
  t.equal(queue.queued, 4, 'the queue holds its bound')
  t.equal(dropped.queue_full, 2, 'the rest dropped')
  await settle()
  t.equal(sent.length, 2, 'the next batch follows the first')
  await settle()
  await settle()
  t.equal(queue.queued, 0)
  t.equal(queue.totals.exported, 6)
})

t.test('a failed export drops its batch, counted; said once until exports work again', async (t) => {
  const { queue, dropped, told, settle } = setup()
  for (let i = 0; i < 4; i++) queue.record(span(i))
  await settle(false)
  await settle(false)
  t.equal(dropped.export_failed, 4)
  t.same(told, ['failing'])
  queue.record(span(5))
  queue.record(span(6))
  await settle(true)
  t.same(told, ['failing', 'recovered'])
  t.match(queue.totals, { exported: 2, dropped: 4, failedExports: 2 })
})

t.test('flush sends everything queued, batch after batch', async (t) => {
  const { queue, sent, settle } = setup({ maxQueueSize: 10 })
  for (let i = 0; i < 5; i++) queue.record(span(i))
  const flushed = queue.flush(10_000)
  for (let batch = 0; batch < 3; batch++) {
    t.equal(sent.length, batch + 1, `batch ${batch + 1} under way`)
    await settle()
  }
  await flushed
  t.same(sent.map((b) => b.length), [2, 2, 1])
  t.equal(queue.totals.exported, 5)
})

t.test('flush gives up at its deadline; close then drops what is left and takes no more', async (t) => {
  const { clock, queue, sent, dropped } = setup()
  for (let i = 0; i < 3; i++) queue.record(span(i))
  const closed = queue.close(500)
  t.equal(sent.length, 1, 'an export hangs')
  clock.advance(500)
  await closed
  t.equal(dropped.queue_full, 1, 'the span still queued is dropped at close')
  queue.record(span(9))
  t.equal(dropped.queue_full, 2, 'nothing is taken after close')
})
