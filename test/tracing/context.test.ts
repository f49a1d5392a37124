// W3C Trace Context and B3 parsing, tracestate checks, ids: the per-request part of tracing.
import t from 'tap'
import { Ids, hostAndPort, incomingParent, parseB3, parseTraceparent, propagate, traceparentOf, validTracestate } from '../../src/tracing/context.js'
import type { HeaderMap, RequestTrace } from '../../src/pipeline/types.js'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const SPAN = '00f067aa0ba902b7'

t.test('traceparent: the W3C rules', async (t) => {
  t.same(parseTraceparent(`00-${TRACE}-${SPAN}-01`), { traceId: TRACE, spanId: SPAN, sampled: true })
  t.same(parseTraceparent(`00-${TRACE}-${SPAN}-00`), { traceId: TRACE, spanId: SPAN, sampled: false })
  t.same(parseTraceparent(`00-${TRACE}-${SPAN}-03`), { traceId: TRACE, spanId: SPAN, sampled: true }, 'other flag bits ignored')
  t.same(parseTraceparent(`01-${TRACE}-${SPAN}-01-future`), { traceId: TRACE, spanId: SPAN, sampled: true }, 'a later version: its extra fields ignored')
  t.same(parseTraceparent(`01-${TRACE}-${SPAN}-01`), { traceId: TRACE, spanId: SPAN, sampled: true })
  for (const bad of [
    undefined,
    '',
    [`00-${TRACE}-${SPAN}-01`, `00-${TRACE}-${SPAN}-01`],
    `ff-${TRACE}-${SPAN}-01`,
    `0g-${TRACE}-${SPAN}-01`,
    `00-${TRACE}-${SPAN}-01-`,
    `01-${TRACE}-${SPAN}-01x`,
    `00-${TRACE.toUpperCase()}-${SPAN}-01`,
    `00-${TRACE}-${SPAN.toUpperCase()}-01`,
    `00-${TRACE}-${SPAN}-0A`,
    `00-${'0'.repeat(32)}-${SPAN}-01`,
    `00-${TRACE}-${'0'.repeat(16)}-01`,
    `00-${TRACE.slice(1)}-${SPAN}0-01`,
    `00_${TRACE}_${SPAN}_01`,
    `00-${TRACE}-${SPAN}-zz`,
  ]) {
    t.equal(parseTraceparent(bad), null, `${JSON.stringify(bad)} is no parent`)
  }
})

t.test('tracestate: passed on only when it is a list of key=value members', async (t) => {
  t.equal(validTracestate('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7'), 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7')
  t.equal(validTracestate(['a=1', 'tenant@sys=2']), 'a=1,tenant@sys=2', 'repeated headers joined')
  t.equal(validTracestate(undefined), undefined)
  t.equal(validTracestate(''), undefined)
  t.equal(validTracestate('no-equals'), undefined)
  t.equal(validTracestate('UPPER=1'), undefined)
  t.equal(validTracestate('a=b=c'), undefined)
  t.equal(validTracestate(Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(',')), undefined, 'more than 32 members')
  t.equal(validTracestate(`a=${'x'.repeat(9000)}`), undefined, 'too long')
})

t.test('B3: single and multi header; 64-bit trace ids widened; bad ones ignored', async (t) => {
  t.same(parseB3({ b3: `${TRACE}-${SPAN}-1` }), { traceId: TRACE, spanId: SPAN, sampled: true, traceState: undefined, via: 'b3' })
  t.same(parseB3({ b3: `${TRACE}-${SPAN}-d-${SPAN}` }), { traceId: TRACE, spanId: SPAN, sampled: true, traceState: undefined, via: 'b3' }, 'debug is sampled')
  t.same(parseB3({ b3: `${TRACE.slice(16)}-${SPAN}` }), { traceId: '0'.repeat(16) + TRACE.slice(16), spanId: SPAN, sampled: false, traceState: undefined, via: 'b3' })
  t.equal(parseB3({ b3: `${TRACE}-${SPAN}-x` }), null, 'an unknown sampling state')
  t.equal(parseB3({ b3: '0' }), null, 'a sampling decision alone is no parent')
  t.equal(parseB3({ b3: `${'0'.repeat(32)}-${SPAN}-1` }), null)
  t.equal(parseB3({ b3: `${TRACE}-${SPAN.slice(2)}-1` }), null)
  t.same(parseB3({ 'x-b3-traceid': TRACE, 'x-b3-spanid': SPAN, 'x-b3-sampled': '1' }), { traceId: TRACE, spanId: SPAN, sampled: true, traceState: undefined, via: 'b3-multi' })
  t.match(parseB3({ 'x-b3-traceid': TRACE, 'x-b3-spanid': SPAN, 'x-b3-flags': '1' }), { sampled: true })
  t.match(parseB3({ 'x-b3-traceid': TRACE, 'x-b3-spanid': SPAN }), { sampled: false })
  t.equal(parseB3({ 'x-b3-traceid': TRACE }), null)
  t.equal(parseB3({ 'x-b3-traceid': 'xyz', 'x-b3-spanid': SPAN }), null)
})

t.test('incomingParent: W3C first, then B3; tracestate only with a valid traceparent', async (t) => {
  t.match(incomingParent({ traceparent: `00-${TRACE}-${SPAN}-01`, tracestate: 'a=1', b3: `${'1'.repeat(32)}-${SPAN}-1` }), { traceId: TRACE, traceState: 'a=1', via: 'w3c' })
  t.match(incomingParent({ traceparent: 'junk', b3: `${TRACE}-${SPAN}-0` }), { traceId: TRACE, sampled: false, via: 'b3' })
  t.equal(incomingParent({}), null)
  t.equal(incomingParent({ traceparent: 'junk', tracestate: 'a=1' }), null)
})

t.test('propagate: traceparent always; tracestate and B3 as the caller spoke', async (t) => {
  const trace = (over: Partial<RequestTrace>): RequestTrace => ({ traceId: TRACE, spanId: SPAN, parentSpanId: undefined, sampled: true, traceState: undefined, via: undefined, ...over })
  const plain: HeaderMap = {}
  propagate(plain, trace({ sampled: false }), 'aaaaaaaaaaaaaaaa')
  t.same(plain, { traceparent: `00-${TRACE}-aaaaaaaaaaaaaaaa-00` })
  const w3c: HeaderMap = {}
  propagate(w3c, trace({ traceState: 'a=1', via: 'w3c' }), 'aaaaaaaaaaaaaaaa')
  t.same(w3c, { traceparent: `00-${TRACE}-aaaaaaaaaaaaaaaa-01`, tracestate: 'a=1' })
  const single: HeaderMap = { b3: 'old' }
  propagate(single, trace({ via: 'b3' }), 'aaaaaaaaaaaaaaaa')
  t.equal(single.b3, `${TRACE}-aaaaaaaaaaaaaaaa-1`)
  const multi: HeaderMap = {}
  propagate(multi, trace({ via: 'b3-multi', sampled: false }), 'aaaaaaaaaaaaaaaa')
  t.match(multi, { 'x-b3-traceid': TRACE, 'x-b3-spanid': 'aaaaaaaaaaaaaaaa', 'x-b3-parentspanid': SPAN, 'x-b3-sampled': '0' })
  t.equal(traceparentOf(TRACE, SPAN, true), `00-${TRACE}-${SPAN}-01`)
})

t.test('ids: lower-case hex of the right length, not repeated, across pool refills', async (t) => {
  const ids = new Ids()
  const seen = new Set<string>()
  const misshapen: string[] = []
  for (let i = 0; i < 2000; i++) {
    const trace = ids.traceId()
    const span = ids.spanId()
    if (!/^[0-9a-f]{32}$/.test(trace) || !/^[0-9a-f]{16}$/.test(span)) misshapen.push(`${trace} ${span}`)
    seen.add(trace).add(span)
  }
  t.same(misshapen, [], '32 and 16 lower-case hex digits')
  t.equal(seen.size, 4000, 'no id twice')
})

t.test('hostAndPort', async (t) => {
  t.same(hostAndPort('shop.example:8443'), { address: 'shop.example', port: 8443 })
  t.same(hostAndPort('[::1]:80'), { address: '::1', port: 80 })
  t.same(hostAndPort('shop'), { address: 'shop', port: undefined })
  t.equal(hostAndPort(undefined), undefined)
  t.equal(hostAndPort(''), undefined)
  t.equal(hostAndPort('a:b:c'), undefined)
})
