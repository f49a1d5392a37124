// Token buckets on a fake clock: burst, refill, the wait until the next token, key eviction at
// maxKeys; the layer's keys (route, client, header) and its 429.
import t from 'tap'
import { RateLimitTables, TokenBuckets, createRateLimitLayer, type RateLimitOptions } from '../../src/layers/rate-limit.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, metricValue, proxyRequest, response, scripted } from '../fixtures/pipeline.js'

t.test('a bucket: the burst at once, then the refill rate; the wait until the next token', async (t) => {
  const clock = fakeClock()
  const b = new TokenBuckets({ requestsPerSecond: 2, burst: 3, maxKeys: 10 }, clock)
  t.same([b.take('k'), b.take('k'), b.take('k')], [0, 0, 0], 'the burst')
  t.equal(b.take('k'), 500, 'empty: a token in 500 ms at 2/s')
  clock.advance(499)
  t.ok(b.take('k') <= 2, 'nearly: a millisecond or so')
  clock.advance(1)
  t.equal(b.take('k'), 0, 'refilled one')
  t.equal(b.take('k'), 500)
  clock.advance(10_000)
  t.same([b.take('k'), b.take('k'), b.take('k'), b.take('k')], [0, 0, 0, 500], 'a long quiet spell refills to the burst, no more')
})

t.test('fractional rates', async (t) => {
  const clock = fakeClock()
  const b = new TokenBuckets({ requestsPerSecond: 0.5, burst: 1, maxKeys: 10 }, clock)
  t.equal(b.take('k'), 0)
  t.equal(b.take('k'), 2000, 'one token every 2 s')
  clock.advance(2000)
  t.equal(b.take('k'), 0)
})

t.test('keys are separate, and the least recently used is forgotten past maxKeys', async (t) => {
  const clock = fakeClock()
  const b = new TokenBuckets({ requestsPerSecond: 1, burst: 1, maxKeys: 2 }, clock)
  t.equal(b.take('a'), 0)
  t.equal(b.take('b'), 0, 'another key, its own bucket')
  t.equal(b.take('a'), 1000, 'a is empty (and now the most recently used)')
  t.equal(b.take('c'), 0, 'a third key: b, the least recently used, is forgotten')
  t.equal(b.size, 2)
  t.equal(b.take('a'), 1000, 'a was kept')
  t.equal(b.take('b'), 0, 'b came back with a full bucket')
  t.equal(b.size, 2)
})

t.test('the clock going back gives no tokens', async (t) => {
  let now = 1_000_000
  const clock = { ...fakeClock(), now: () => now }
  const b = new TokenBuckets({ requestsPerSecond: 1, burst: 1, maxKeys: 2 }, clock)
  b.take('a')
  now -= 5000
  t.equal(b.take('a'), 1000)
})

const OPTS: RateLimitOptions = { requestsPerSecond: 1, burst: 2, key: 'route', maxKeys: 100 }

async function statuses(layer: ReturnType<typeof drive>, reqs: Array<[Record<string, string>, string]>): Promise<Array<number | string>> {
  const out: Array<number | string> = []
  for (const [headers, client] of reqs) {
    const next = scripted(response(200))
    out.push(await layer(next)(proxyRequest({ headers }), context({ clientAddress: client })).then((r) => r.status, (e: { code: string }) => e.code))
  }
  return out
}

t.test('the layer: over the limit is rate_limited with Retry-After, counted', async (t) => {
  const d = deps()
  const clock = fakeClock()
  const layer = drive(createRateLimitLayer(OPTS, { metrics: d.metrics, clock }))
  t.same(await statuses(layer, [[{}, 'a'], [{}, 'b'], [{}, 'c']]), [200, 200, 'rate_limited'], 'key route: every client shares the bucket')
  const err = await layer(scripted(response(200)))(proxyRequest(), context()).catch((e: unknown) => e)
  t.match(err, { code: 'rate_limited', status: 429, retryAfterSeconds: 1 })
  t.equal(await metricValue(d, 'sidecar_rejected_requests_total', { reason: 'rate_limited' }), 2)
  clock.advance(1000)
  t.same(await statuses(layer, [[{}, 'a']]), [200], 'a token again after a second')
})

t.test('the layer: keyed by client, and by header (absent: by client)', async (t) => {
  const d = deps()
  const byClient = drive(createRateLimitLayer({ ...OPTS, burst: 1, key: 'client' }, { metrics: d.metrics, clock: fakeClock() }))
  t.same(await statuses(byClient, [[{}, 'a'], [{}, 'b'], [{}, 'a']]), [200, 200, 'rate_limited'])
  const byKey = drive(createRateLimitLayer({ ...OPTS, burst: 1, key: 'header:x-api-key' }, { metrics: d.metrics, clock: fakeClock() }))
  t.same(
    await statuses(byKey, [
      [{ 'x-api-key': 'k1' }, 'a'],
      [{ 'x-api-key': 'k2' }, 'a'],
      [{ 'x-api-key': 'k1' }, 'b'],
      [{}, 'a'],
      [{}, 'b'],
      [{}, 'a'],
      [{ 'x-api-key': 'client:a' }, 'c'],
    ]),
    [200, 200, 'rate_limited', 200, 200, 'rate_limited', 200],
    'one bucket per key value; without the header, one per client; a value cannot pose as a client',
  )
})

t.test('RateLimitTables keep a route\'s buckets across a rebuild while its settings stay', async (t) => {
  const clock = fakeClock()
  const tables = new RateLimitTables(clock)
  tables.begin()
  const first = tables.get('login', OPTS)
  tables.commit()
  tables.begin()
  t.equal(tables.get('login', OPTS), first, 'same settings: the same buckets')
  t.not(tables.get('other', OPTS), first, 'another route: its own')
  tables.commit()
  tables.begin()
  t.not(tables.get('login', { ...OPTS, burst: 5 }), first, 'new settings: new buckets')
  tables.commit()
  tables.begin()
  t.not(tables.get('login', OPTS), first, 'a table not asked for in a generation is dropped')
  tables.commit()
})
