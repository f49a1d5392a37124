// Bodies and streaming through the real proxy: byte-exact both ways, never buffered whole.
import { Readable } from 'node:stream'
import t from 'tap'
import { request as undiciRequest } from 'undici'
import { json, request } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream, pseudoRandomChunks, sha256Of, type Echo } from '../fixtures/upstream.js'

const MiB = 1024 * 1024

t.test('request bodies arrive byte-exact: 0 B, 1 MiB and 50 MiB, for GET/POST/PUT', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  for (const [method, size] of [['GET', 0], ['POST', 0], ['POST', MiB], ['PUT', MiB], ['PUT', 50 * MiB], ['POST', 50 * MiB]] as const) {
    const body = size === 0 ? undefined : Readable.from(pseudoRandomChunks(size))
    const { reply, body: echoed } = await json<Echo>(`${proxy.url}/upload`, {
      method,
      headers: size === 0 ? {} : { 'content-length': size },
      body,
    })
    t.equal(reply.status, 200, `${method} ${size}`)
    t.equal(echoed.bodyBytes, size, `${method} ${size}: length`)
    t.equal(echoed.sha256, sha256Of(pseudoRandomChunks(size)), `${method} ${size}: sha256`)
    t.equal(echoed.headers['content-length'], size === 0 && method === 'GET' ? undefined : String(size))
  }
})

t.test('a chunked upload is forwarded chunked and byte-exact', async (t) => {
  const { proxy } = await proxied(t, fakeUpstream())
  const size = 3 * MiB + 17
  const { reply, body } = await json<Echo>(`${proxy.url}/chunked`, {
    method: 'POST',
    body: Readable.from(pseudoRandomChunks(size, 10_000)), // no content-length: node sends chunked
  })
  t.equal(reply.status, 200)
  t.equal(body.headers['transfer-encoding'], 'chunked')
  t.equal(body.bodyBytes, size)
  t.equal(body.sha256, sha256Of(pseudoRandomChunks(size, 10_000)))
})

t.test('response bodies arrive byte-exact, 50 MiB streamed', async (t) => {
  const size = 50 * MiB
  const { proxy } = await proxied(t, fakeUpstream()
    .route('/download', (_req, res) => {
      res.writeHead(200, { 'content-length': size })
      Readable.from(pseudoRandomChunks(size)).pipe(res)
    })
    )
  const res = await undiciRequest(`${proxy.url}/download`)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-length'], String(size))
  const hash = (await import('node:crypto')).createHash('sha256')
  let n = 0
  for await (const chunk of res.body) {
    n += chunk.length
    hash.update(chunk)
  }
  t.equal(n, size)
  t.equal(hash.digest('hex'), sha256Of(pseudoRandomChunks(size)))
  t.ok(process.memoryUsage().rss < 1024 * MiB, 'no whole-body buffering blew up memory')
})

t.test('a streaming response reaches the client before the upstream has finished', async (t) => {
  let finish!: () => void
  const finished = new Promise<void>((resolve) => (finish = resolve))
  const { proxy } = await proxied(t, fakeUpstream()
    .route('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('first chunk\n')
      void finished.then(() => res.end('last chunk\n'))
    })
    )
  const res = await undiciRequest(`${proxy.url}/stream`)
  const it = res.body[Symbol.asyncIterator]()
  const first = await it.next()
  t.equal(String(first.value), 'first chunk\n', 'first chunk arrived while the upstream still holds the response open')
  finish()
  let rest = ''
  for (let r = await it.next(); !r.done; r = await it.next()) rest += String(r.value)
  t.equal(rest, 'last chunk\n')
})

t.test('status, headers and query pass through untouched', async (t) => {
  const { up, proxy } = await proxied(t, fakeUpstream()
    .route('/created', (_req, res) => {
      res.setHeader('set-cookie', ['a=1', 'b=2'])
      res.writeHead(201, { location: '/things/1', 'x-app': 'yes' }).end('made')
    })
    )
  const reply = await request(`${proxy.url}/created?q=%20a&b=2`, { method: 'POST', body: 'x' })
  t.equal(reply.status, 201)
  t.equal(reply.headers.location, '/things/1')
  t.equal(reply.headers['x-app'], 'yes')
  t.same(reply.headers['set-cookie'], ['a=1', 'b=2'])
  t.equal(reply.body.toString(), 'made')
  t.equal(up.seen[0]?.url, '/created?q=%20a&b=2')
  const head = await request(`${proxy.url}/anything`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.body.length, 0)
})
