// Header handling through the real proxy: hop-by-hop removal both ways, X-Forwarded-*, request id.
import t, { type Test } from 'tap'
import { json, raw, request } from '../fixtures/client.js'
import { proxied } from '../fixtures/proxy.js'
import { fakeUpstream, type Echo } from '../fixtures/upstream.js'

async function setup(t: Test, config: Record<string, unknown> = {}) {
  const { up, proxy } = await proxied(t, fakeUpstream()
    .route('/hop-response', (_req, res) => {
      res.writeHead(200, {
        connection: 'x-internal',
        'x-internal': 'secret',
        'keep-alive': 'timeout=5',
        'proxy-authenticate': 'Basic',
        upgrade: 'h2c',
        'x-kept': 'yes',
        'content-length': 2,
      })
      res.end('ok')
    })
    , config)
  return { up, proxy }
}

t.test('hop-by-hop and Connection-named request headers are removed before the proxy adds its own', async (t) => {
  const { up, proxy } = await setup(t)
  const response = await raw(
    proxy.port,
    'GET /hop HTTP/1.1\r\nHost: app.example\r\n' +
      'Connection: close, x-forwarded-for, X-Secret\r\n' +
      'X-Secret: do-not-forward\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\n' +
      'Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTrailer: x-t\r\n' +
      'X-Forwarded-For: 6.6.6.6\r\nX-Normal: kept\r\n\r\n',
  )
  t.match(response, /^HTTP\/1\.1 200 /)
  const seen = up.seen[0]!.headers
  for (const h of ['x-secret', 'keep-alive', 'proxy-authorization', 'proxy-connection']) {
    t.equal(seen[h], undefined, `${h} not forwarded`)
  }
  t.equal(seen.te, 'trailers', 'TE: trailers is passed on (the client takes trailers)')
  t.equal(seen.trailer, 'x-t', 'Trailer is end-to-end')
  t.equal(seen['x-normal'], 'kept')
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'the proxy still sets X-Forwarded-For after Connection named it')
  t.equal(seen.host, 'app.example', 'Host is kept')
})

t.test('hop-by-hop and Connection-named response headers are removed', async (t) => {
  const { proxy } = await setup(t)
  const reply = await request(`${proxy.url}/hop-response`)
  t.equal(reply.status, 200)
  t.equal(reply.headers['x-internal'], undefined)
  t.equal(reply.headers['proxy-authenticate'], undefined)
  t.equal(reply.headers.upgrade, undefined)
  t.not(reply.headers['keep-alive'], 'timeout=5', "the app's Keep-Alive is not passed on")
  t.equal(reply.headers['x-kept'], 'yes')
  t.equal(reply.body.toString(), 'ok')
})

t.test('client-sent X-Forwarded-* are dropped and replaced by default', async (t) => {
  const { proxy } = await setup(t)
  const { body } = await json<Echo>(`${proxy.url}/xff`, {
    headers: {
      host: 'shop.example',
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'evil.example',
      forwarded: 'for=1.2.3.4',
    },
  })
  t.equal(body.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(body.headers['x-forwarded-proto'], 'http')
  t.equal(body.headers['x-forwarded-host'], 'shop.example')
  t.equal(body.headers.forwarded, undefined)
})

t.test('with trustForwardedHeaders the chain is extended and proto/host are kept', async (t) => {
  const { proxy } = await setup(t, { listener: { trustForwardedHeaders: true } })
  const { body } = await json<Echo>(`${proxy.url}/xff`, {
    headers: { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'front.example' },
  })
  t.equal(body.headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1')
  t.equal(body.headers['x-forwarded-proto'], 'https')
  t.equal(body.headers['x-forwarded-host'], 'front.example')
})

t.test('x-request-id: generated when absent, kept when sent, passed upstream, returned, logged', async (t) => {
  const { proxy } = await setup(t)
  const generated = await json<Echo>(`${proxy.url}/id`)
  const id = generated.reply.headers['x-request-id'] as string
  t.match(id, /^[0-9a-f-]{36}$/)
  t.equal(generated.body.headers['x-request-id'], id, 'the app got the same id')
  t.equal((await proxy.accessLine(id)).path, '/id')

  const kept = await json<Echo>(`${proxy.url}/id`, { headers: { 'x-request-id': 'abc-123' } })
  t.equal(kept.reply.headers['x-request-id'], 'abc-123')
  t.equal(kept.body.headers['x-request-id'], 'abc-123')

  const tooLong = await json<Echo>(`${proxy.url}/id`, { headers: { 'x-request-id': 'x'.repeat(200) } })
  t.match(tooLong.reply.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'an oversized id is replaced')
})
