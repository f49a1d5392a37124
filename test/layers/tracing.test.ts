// The tracing layers with a scripted `next` and no sockets: the sampling decision, the SERVER
// span's attributes, the CLIENT span per attempt and what the app is told.
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createAttemptSpanLayer } from '../../src/layers/attempt-span.js'
import { createRetryLayer } from '../../src/layers/retry.js'
import { createTracingLayer } from '../../src/layers/tracing.js'
import { compose } from '../../src/pipeline/compose.js'
import type { HeaderMap } from '../../src/pipeline/types.js'
import { CLIENT, Ids, SERVER, type SpanRecord } from '../../src/tracing/context.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, deps, drive, end, fromAsync, promised, proxyRequest, response, scripted, type Step } from '../fixtures/pipeline.js'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const CALLER = '00f067aa0ba902b7'

function setup(steps: Step[], o: { sampleRatio?: number; random?: () => number } = {}) {
  const spans: SpanRecord[] = []
  const sink = { record: (s: SpanRecord) => void spans.push(s) }
  const ids = new Ids()
  const next = scripted(...steps)
  const handler = promised(
    compose(
      [
        createTracingLayer({ sampleRatio: o.sampleRatio ?? 1 }, { sink, ids, random: o.random ?? (() => 0.5) }),
        createRetryLayer(
          {
            attempts: 2,
            retryOn: ['refused'],
            statusCodes: [],
            methods: ['GET'],
            backoff: { baseMs: 1, maxMs: 1 },
            budget: { ratio: 1, minPerSecond: 100, windowMs: 10_000 },
            maxReplayBytes: 0,
            requestTimeoutMs: 10_000,
          },
          { metrics: deps().metrics, clock: fakeClock(), random: () => 0 },
        ),
        createAttemptSpanLayer([{ name: 'app', url: 'http://127.0.0.1:8080' }], { sink, ids }),
      ],
      fromAsync(async (req, ctx) => {
        ctx.backend = 'app'
        return next(req, ctx)
      }),
    ),
  )
  return { handler, next, spans }
}

t.test('sampling is parent-based: a caller\'s flag is followed; without one, sampleRatio decides', async (t) => {
  const cases: Array<[string, { traceparent?: string }, number, number, boolean]> = [
    ['sampled parent, ratio 0', { traceparent: `00-${TRACE}-${CALLER}-01` }, 0, 0.5, true],
    ['unsampled parent, ratio 1', { traceparent: `00-${TRACE}-${CALLER}-00` }, 1, 0, false],
    ['no parent, draw under the ratio', {}, 0.01, 0.005, true],
    ['no parent, draw over the ratio', {}, 0.01, 0.5, false],
    ['no parent, ratio 0, even a draw of 0', {}, 0, 0, false],
  ]
  for (const [what, headers, sampleRatio, draw, sampled] of cases) {
    const { handler, next, spans } = setup([response(200)], { sampleRatio, random: () => draw })
    const ctx = context()
    await handler(proxyRequest({ headers: { ...headers } }), ctx)
    end(ctx)
    t.equal(ctx.trace!.sampled, sampled, what)
    t.match(next.calls[0]!.req.headers.traceparent, new RegExp(`-${sampled ? '01' : '00'}$`), `${what}: told to the app`)
    t.equal(spans.length, sampled ? 2 : 0, `${what}: ${sampled ? 'two spans' : 'no span'} recorded`)
  }
})

t.test('the SERVER span: semantic-convention attributes, the proxy\'s own, error status on 5xx', async (t) => {
  const { handler, spans } = setup([response(502)])
  const ctx = context({ clientAddress: '10.0.0.9', httpVersion: '2.0', startedAt: 1_000_000_000n })
  const req = proxyRequest({ method: 'PURGE', path: '/a/b?token=x', headers: { host: 'shop.example:8443' } })
  await handler(req, ctx)
  ctx.error = 'upstream_reset'
  end(ctx, { status: 502, durationSeconds: 0.25, complete: false })
  const server = spans.find((s) => s.kind === SERVER)!
  t.match(server, { name: 'HTTP OTHER', traceId: ctx.trace!.traceId, spanId: ctx.trace!.spanId, parentSpanId: undefined, parentRemote: false, error: true })
  t.equal(server.end - server.start, 250_000_000n)
  t.same(server.attributes, {
    'http.request.method': '_OTHER',
    'http.request.method_original': 'PURGE',
    'url.path': '/a/b',
    'url.scheme': 'http',
    'http.response.status_code': 502,
    'network.protocol.version': '2',
    'client.address': '10.0.0.9',
    'server.address': 'shop.example',
    'server.port': 8443,
    'sidecar.attempts': 1,
    'sidecar.backend': 'app',
    'sidecar.error': 'upstream_reset',
    'error.type': 'upstream_reset',
    'sidecar.incomplete': true,
  })
})

t.test('the matched route names the span and fills http.route; the default route leaves the method', async (t) => {
  const { handler, spans } = setup([response(200), response(200)])
  const ctx = context()
  ctx.route = 'checkout'
  await handler(proxyRequest(), ctx)
  end(ctx)
  const plain = context()
  await handler(proxyRequest(), plain)
  end(plain)
  const [server, other] = spans.filter((s) => s.kind === SERVER)
  t.equal(server!.name, 'checkout')
  t.equal(server!.attributes['http.route'], 'checkout')
  t.equal(other!.name, 'HTTP GET')
  t.equal(other!.attributes['http.route'], undefined)
})

t.test('a CLIENT span per attempt, the app told each one; a failed attempt carries its code', async (t) => {
  const { handler, next, spans } = setup([new SidecarError('upstream_refused'), response(200)])
  const ctx = context()
  await handler(proxyRequest({ headers: { traceparent: `00-${TRACE}-${CALLER}-01` } }), ctx)
  const clients = spans.filter((s) => s.kind === CLIENT)
  t.equal(clients.length, 2)
  const told = next.calls.map((c) => (c.req.headers as HeaderMap).traceparent as string)
  t.same(clients.map((c) => `00-${TRACE}-${c.spanId}-01`), told, "each attempt's traceparent names its CLIENT span")
  t.match(clients[0], { error: true, parentSpanId: ctx.trace!.spanId, attributes: { 'sidecar.error': 'upstream_refused', 'error.type': 'upstream_refused', 'sidecar.attempt': 1, 'server.address': '127.0.0.1', 'server.port': 8080 } })
  t.match(clients[1], { error: false, attributes: { 'http.response.status_code': 200, 'http.request.resend_count': 1, 'sidecar.attempt': 2 } })
})

t.test('an invalid tracestate is dropped while a valid traceparent is continued', async (t) => {
  const { handler, next } = setup([response(200)])
  await handler(proxyRequest({ headers: { traceparent: `00-${TRACE}-${CALLER}-01`, tracestate: 'NOT VALID' } }), context())
  t.notOk('tracestate' in next.calls[0]!.req.headers)
  t.match(next.calls[0]!.req.headers.traceparent, new RegExp(`^00-${TRACE}-`))
})

t.test('below retry with no trace on the context (tracing layer absent): untouched', async (t) => {
  const spans: SpanRecord[] = []
  const next = scripted(response(200))
  const handler = drive(createAttemptSpanLayer([], { sink: { record: (s) => void spans.push(s) }, ids: new Ids() }))(next)
  await handler(proxyRequest({ headers: {} }), context())
  t.same(next.calls[0]!.req.headers, {})
  t.equal(spans.length, 0)
})
