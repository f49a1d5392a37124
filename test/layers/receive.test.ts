// The receive layer: which bodies are read whole before the app is asked, which stream, and
// how a silent client is told apart from a slow app. Time is a fake clock.
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { SidecarError } from '../../src/errors.js'
import { createReceiveLayer } from '../../src/layers/receive.js'
import { BufferBudget } from '../../src/pipeline/buffers.js'
import { fakeClock } from '../fixtures/clock.js'
import { context, drive, end, proxyRequest, response, scripted, textOf } from '../fixtures/pipeline.js'

const OPTS = { requestBufferBytes: 1024, bodyIdleTimeoutMs: 60_000 }

function setup(opts = OPTS, ceiling = 1 << 20) {
  const clock = fakeClock()
  const buffers = new BufferBudget(ceiling)
  const next = scripted(response(200))
  const handler = drive(createReceiveLayer(opts, { clock, buffers }))(next)
  return { clock, buffers, next, handler }
}

/** A body the test writes into, chunk by chunk. */
const body = () => new PassThrough()
const tick = () => new Promise((resolve) => setImmediate(resolve))

t.test('a small body is received whole before the app is asked; its budget comes back at the end', async (t) => {
  const { next, handler, buffers } = setup()
  const b = body()
  const ctx = context()
  const done = handler(proxyRequest({ method: 'POST', body: b, contentLength: 10 }), ctx)
  b.write('hello')
  await tick()
  t.equal(next.calls.length, 0, 'not forwarded while the body is still coming')
  t.equal(buffers.used, 10, 'the declared length is taken from the budget')
  b.end('world')
  await done
  const sent = next.calls[0]!.req.body
  t.ok(Buffer.isBuffer(sent), 'the app gets a buffer, replayable and sent at the app\'s speed')
  t.equal(sent!.toString(), 'helloworld')
  end(ctx)
  t.equal(buffers.used, 0)
})

t.test('a chunked body within the buffer is received whole too', async (t) => {
  const { next, handler, buffers } = setup()
  const b = body()
  const done = handler(proxyRequest({ method: 'POST', body: b }), context())
  b.end('chunked but small')
  await done
  t.same(next.calls[0]!.req.body, Buffer.from('chunked but small'))
  t.equal(buffers.used, 1024, 'an undeclared length takes the whole buffer until the request ends')
})

t.test('a client silent mid-body for bodyIdleTimeoutMs: 408 request_timeout, and the app never asked', async (t) => {
  const { clock, next, handler } = setup()
  const b = body()
  const done = handler(proxyRequest({ method: 'POST', body: b, contentLength: 100 }), context())
  b.write('a few bytes')
  await tick()
  clock.advance(59_999)
  b.write('one more just in time')
  await tick()
  clock.advance(59_999)
  await tick()
  t.equal(next.calls.length, 0, 'each byte restarts the wait')
  clock.advance(1)
  await t.rejects(done, { code: 'request_timeout' })
  t.equal(next.calls.length, 0)
  t.ok(b.isPaused() && !b.destroyed, 'the body is left paused: destroying it would cut the socket the 408 goes on')
})

t.test('a client gone mid-body is the client\'s doing: client_closed', async (t) => {
  const { handler } = setup()
  const b = body()
  const done = handler(proxyRequest({ method: 'POST', body: b, contentLength: 100 }), context())
  b.destroy(new Error('socket hang up'))
  await t.rejects(done, { code: 'client_closed' })
})

t.test('the body cap\'s own error passes through unchanged', async (t) => {
  const { handler } = setup()
  const b = body()
  const done = handler(proxyRequest({ method: 'POST', body: b, contentLength: 100 }), context())
  b.destroy(new SidecarError('body_too_large'))
  await t.rejects(done, { code: 'body_too_large' })
})

t.test('bodies that stream as they come: larger than the buffer, gRPC, with no budget left, or with the buffer off', async (t) => {
  const cases: Array<[string, Partial<Parameters<typeof proxyRequest>[0]>, { opts?: typeof OPTS; ceiling?: number }]> = [
    ['declared larger than requestBufferBytes', { contentLength: 4096 }, {}],
    ['gRPC', { contentLength: 10, headers: { 'content-type': 'application/grpc' } }, {}],
    ['the budget for all buffers spent', { contentLength: 10 }, { ceiling: 5 }],
    ['requestBufferBytes 0', { contentLength: 10 }, { opts: { ...OPTS, requestBufferBytes: 0 } }],
  ]
  for (const [what, over, { opts, ceiling }] of cases) {
    const { next, handler, buffers } = setup(opts, ceiling)
    const b = body()
    await handler(proxyRequest({ method: 'POST', body: b, ...over }), context())
    const sent = next.calls[0]?.req.body
    t.ok(sent instanceof Readable, `${what}: forwarded at once, as a stream`)
    b.end('streamed')
    t.equal(await textOf(sent as Readable), 'streamed', `${what}: every byte passes`)
    t.equal(buffers.used, 0, `${what}: no budget held`)
  }
})

t.test('a chunked body past the buffer: what was read, then the rest as it comes, in order', async (t) => {
  const { next, handler } = setup()
  const b = body()
  const done = handler(proxyRequest({ method: 'POST', body: b }), context())
  b.write(Buffer.alloc(800, 'a'))
  b.write(Buffer.alloc(800, 'b'))
  await done
  const sent = next.calls[0]!.req.body as Readable
  t.ok(sent instanceof Readable)
  b.end('tail')
  t.equal(await textOf(sent), 'a'.repeat(800) + 'b'.repeat(800) + 'tail')
})

t.test('a streamed body: a silent client fails it, an app that does not read does not', async (t) => {
  const { clock, next, handler } = setup()
  const b = body()
  await handler(proxyRequest({ method: 'POST', body: b, contentLength: 1 << 20 }), context())
  const sent = next.calls[0]!.req.body as Readable
  // nobody reads `sent` yet: the app is slow; the bytes wait in the guard
  b.write(Buffer.alloc(64 * 1024))
  await tick()
  clock.advance(10 * 60_000)
  await tick()
  t.notOk(sent.destroyed, 'a body held up by the app is not the client\'s fault')
  // the app reads it all; then the client goes quiet
  const errors: unknown[] = []
  sent.on('error', (err) => errors.push(err))
  sent.resume()
  await tick()
  clock.advance(60_000)
  await tick()
  t.match(errors, [{ code: 'request_timeout' }], 'the client sent nothing while the app waited')
  t.ok(b.isPaused() && !b.destroyed, 'the client\'s body is left paused, its socket alive for the answer')
})

t.test('a streamed body the app never read ends with its request: no timer left waiting on it', async (t) => {
  const { clock, next, handler } = setup()
  const b = body()
  const ctx = context()
  await handler(proxyRequest({ method: 'POST', body: b, contentLength: 1 << 20 }), ctx)
  const sent = next.calls[0]!.req.body as Readable
  b.write(Buffer.alloc(64 * 1024)) // backed up: nobody reads
  await tick()
  end(ctx) // the app answered (or failed) without reading it
  t.ok(sent.destroyed, 'the guard is let go')
  const before = clock.timeouts.length
  clock.advance(10 * 60_000)
  t.equal(clock.timeouts.length, before, 'and sets no timer again')
})
