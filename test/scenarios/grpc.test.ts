// gRPC through the real proxy with @grpc/grpc-js on both ends: the client speaks h2c to the
// plain listener, the proxy speaks h2c to the app (backends[].protocol: h2c). Unary and the three
// kinds of streaming, an app error with its trailing metadata, the app down, the standard health
// check gating readiness, and a client deadline.
import http2 from 'node:http2'
import t from 'tap'
import { json, request, until, within } from '../fixtures/client.js'
import { ECHO, echoClient, grpc, grpcApp, unary } from '../fixtures/grpc.js'
import { startProxy } from '../fixtures/proxy.js'
import { freePort } from '../fixtures/upstream.js'

const h2cBackend = (url: string, extra: Record<string, unknown> = {}) => ({
  backends: [{ name: 'app', url, protocol: 'h2c', healthCheck: { grpc: { service: '' }, intervalMs: 200, timeoutMs: 200 }, ...extra }],
})

t.test('unary and streaming calls in every direction', async (t) => {
  const app = await grpcApp(t)
  const proxy = await startProxy(app.url, h2cBackend(app.url))
  t.teardown(() => proxy.close())
  const client = echoClient(t, `127.0.0.1:${proxy.port}`)

  const one = await unary(client, 'unary', Buffer.from('ping'))
  t.equal(one.value?.toString(), 'ping', 'unary')
  t.equal(one.status?.code, grpc.status.OK)

  const parts: string[] = []
  await new Promise<void>((resolve, reject) => {
    const call = (client.serverStream as unknown as (m: Buffer) => grpc.ClientReadableStream<Buffer>)(Buffer.from([5]))
    call.on('data', (b: Buffer) => parts.push(b.toString()))
    call.on('end', resolve)
    call.on('error', reject)
  })
  t.same(parts, ['part 1', 'part 2', 'part 3', 'part 4', 'part 5'], 'server streaming')

  const joined = await new Promise<string>((resolve, reject) => {
    const call = (client.clientStream as unknown as (cb: (e: Error | null, v?: Buffer) => void) => grpc.ClientWritableStream<Buffer>)((e, v) => (e ? reject(e) : resolve(v!.toString())))
    for (const w of ['a', 'b', 'c']) call.write(Buffer.from(w))
    call.end()
  })
  t.equal(joined, 'abc', 'client streaming')

  // bidi: each message is answered before the next is sent; nothing waits for the end
  const call = (client.bidi as unknown as () => grpc.ClientDuplexStream<Buffer, Buffer>)()
  const replies: string[] = []
  for (const w of ['one', 'two', 'three']) {
    const reply = new Promise<string>((resolve) => call.once('data', (b: Buffer) => resolve(b.toString())))
    call.write(Buffer.from(w))
    replies.push(await reply)
  }
  call.end()
  await new Promise((resolve) => call.on('status', resolve))
  t.same(replies, ['echo one', 'echo two', 'echo three'], 'bidi, message by message')
  t.same(app.calls, [ECHO.unary.path, ECHO.serverStream.path, ECHO.clientStream.path, ECHO.bidi.path])
})

t.test("an app's error status reaches the client with its message and trailing metadata", async (t) => {
  const app = await grpcApp(t)
  const proxy = await startProxy(app.url, h2cBackend(app.url))
  t.teardown(() => proxy.close())
  const failed = await unary(echoClient(t, `127.0.0.1:${proxy.port}`), 'fail', Buffer.from('x'), new grpc.Metadata())
  t.equal(failed.error?.code, grpc.status.FAILED_PRECONDITION)
  t.equal(failed.error?.details, 'no more widgets')
  t.same(failed.status?.metadata.get('x-reason'), ['out of stock'], 'trailing metadata')
})

t.test('the app down: UNAVAILABLE from the proxy, said in gRPC; the health check holds readiness', async (t) => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const proxy = await startProxy(url, h2cBackend(url))
  t.teardown(() => proxy.close())
  const client = echoClient(t, `127.0.0.1:${proxy.port}`)
  const down = await unary(client, 'unary', Buffer.from('ping'))
  t.equal(down.error?.code, grpc.status.UNAVAILABLE, 'UNAVAILABLE, which gRPC clients retry')
  t.same(down.status?.metadata.get('x-sidecar-error'), ['upstream_unhealthy'])
  const ready = await json<{ holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)
  t.equal(ready.reply.status, 503)
  t.match(ready.body.holding['backend:app'], /gRPC health check failed: upstream_refused/)

  const app = await grpcApp(t, port)
  await until(() => proxy.app.backends().app?.healthy === true)
  t.equal((await request(`${proxy.adminUrl}/ready`)).status, 200, 'ready once the app answers SERVING')
  t.equal((await unary(client, 'unary', Buffer.from('ping'))).value?.toString(), 'ping')

  app.serving = 2
  await until(() => proxy.app.backends().app?.healthy === false)
  t.match((await json<{ holding: Record<string, string> }>(`${proxy.adminUrl}/ready`)).body.holding, { 'backend:app': /answered NOT_SERVING/ }, 'NOT_SERVING takes readiness away')
})

t.test('retry.retryOn: unavailable retries a call the app answered UNAVAILABLE alone, with its message again', async (t) => {
  const app = await grpcApp(t)
  const proxy = await startProxy(app.url, { ...h2cBackend(app.url), retry: { attempts: 3, retryOn: ['unavailable'], backoff: { baseMs: 1, maxMs: 1 } } })
  t.teardown(() => proxy.close())
  const client = echoClient(t, `127.0.0.1:${proxy.port}`)
  app.unavailable = 2
  const got = await unary(client, 'flaky', Buffer.from('order 42'), new grpc.Metadata())
  t.equal(got.value?.toString(), 'order 42', 'the third try answered')
  t.same(app.flakyBodies, ['order 42', 'order 42', 'order 42'], 'each try carried the whole message')

  const plain = await startProxy(app.url, h2cBackend(app.url))
  t.teardown(() => plain.close())
  app.unavailable = 1
  const once = await unary(echoClient(t, `127.0.0.1:${plain.port}`), 'flaky', Buffer.from('x'))
  t.equal(once.error?.code, grpc.status.UNAVAILABLE, 'without it, the UNAVAILABLE is the answer: gRPC retries only when asked')
})

t.test("grpc-timeout caps the proxy's deadline: DEADLINE_EXCEEDED, said in gRPC", async (t) => {
  const app = await grpcApp(t)
  const proxy = await startProxy(app.url, h2cBackend(app.url))
  t.teardown(() => proxy.close())
  // Node's http2 client: unlike gRPC clients it keeps no deadline of its own, so the answer is the proxy's
  const session = http2.connect(`http://127.0.0.1:${proxy.port}`)
  t.teardown(() => session.destroy())
  const started = Date.now()
  const headers = await within(
    new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
      const stream = session.request({ ':method': 'POST', ':path': ECHO.hang.path, 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '300m' })
      stream.on('response', resolve)
      stream.on('error', reject)
      stream.end(Buffer.from([0, 0, 0, 0, 1, 0x78]))
    }),
    5000,
    'an answer',
  )
  t.equal(headers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED))
  t.equal(headers['x-sidecar-error'], 'upstream_timeout')
  t.ok(Date.now() - started >= 290, `after ${Date.now() - started} ms (grpc-timeout 300m; limits.requestTimeoutMs 15 s)`)
})
