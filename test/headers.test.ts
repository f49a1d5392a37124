import t from 'tap'
import { util } from 'undici'
import { endToEnd, endToEndRaw, newRequestId, requestIdFrom, upstreamRequestHeaders } from '../src/headers.js'

const info = { clientAddress: '10.1.2.3', protocol: 'https' as const, trustForwardedHeaders: false, headersWithUnderscores: 'drop' as const }

t.test('endToEnd drops hop-by-hop headers and the ones Connection names, in any case and spacing', async (t) => {
  const out = endToEnd({
    connection: 'Keep-Alive,  X-Foo ,x-bar',
    'keep-alive': 'timeout=5',
    'transfer-encoding': 'chunked',
    te: 'trailers',
    trailer: 'x-t',
    upgrade: 'h2c',
    'proxy-authorization': 'Basic x',
    'proxy-connection': 'keep-alive',
    expect: '100-continue',
    'x-foo': '1',
    'x-bar': '2',
    'x-baz': '3',
    'set-cookie': ['a=1', 'b=2'],
    'x-undefined': undefined,
  })
  t.same(out, { trailer: 'x-t', 'x-baz': '3', 'set-cookie': ['a=1', 'b=2'] }, 'Trailer is end-to-end (RFC 9110 6.6.2)')
})

t.test('TE: only `trailers` is passed on, whatever else the client takes', async (t) => {
  for (const [te, forwarded] of [
    ['trailers', 'trailers'],
    ['gzip, Trailers', 'trailers'],
    [['deflate', 'trailers;q=1'], undefined],
    ['gzip', undefined],
    [undefined, undefined],
  ] as const) {
    t.equal(upstreamRequestHeaders(te === undefined ? {} : { te: te as string | string[] }, 'id', info).te, forwarded, JSON.stringify(te))
  }
})

t.test('endToEndRaw: raw pairs (Buffers, any case) to the same headers as endToEnd of the parsed ones', async (t) => {
  const raw = ['Connection', 'keep-alive, X-Foo', 'Keep-Alive', 'timeout=5', 'Transfer-Encoding', 'chunked', 'X-Foo', '1', 'Set-Cookie', 'a=1', 'set-cookie', 'b=2', 'Content-Type', 'text/plain', ':status', '200']
  t.same(endToEndRaw(raw.map((s) => Buffer.from(s, 'latin1'))), { 'set-cookie': ['a=1', 'b=2'], 'content-type': 'text/plain' }, 'repeats kept as a list; named, hop-by-hop and pseudo-headers dropped')
  t.same(endToEndRaw(['Content-Length', '2', 'Connection', 'close']), { 'content-length': '2' }, 'Connection: close names nothing more')
  t.same(endToEndRaw(null), {})
  // what the upstream client passes: undici's names, interned for the well-known ones
  const buffers = [...raw, 'X-Odd-Name', 'v'].map((s) => Buffer.from(s, 'latin1'))
  t.same(endToEndRaw(buffers, util.headerNameToString), endToEndRaw(buffers), "undici's header names give the same headers")
  t.same(endToEndRaw(buffers, util.headerNameToString)['x-odd-name'], 'v', 'a name it does not know is lower-cased too')
})

t.test('endToEnd reads a Connection header given as a list', async (t) => {
  t.same(endToEnd({ connection: ['x-a', 'x-b'], 'x-a': '1', 'x-b': '2', 'x-c': '3' }), { 'x-c': '3' })
})

t.test('the proxy sets X-Forwarded-* after removal, even when Connection names them', async (t) => {
  const out = upstreamRequestHeaders(
    { host: 'h.example', connection: 'x-forwarded-for, x-request-id', 'x-forwarded-for': '6.6.6.6', 'x-request-id': 'old' },
    'rid',
    info,
  )
  t.same(out, {
    host: 'h.example',
    'x-forwarded-for': '10.1.2.3',
    'x-forwarded-proto': 'https',
    'x-forwarded-host': 'h.example',
    'x-request-id': 'rid',
  })
})

t.test('untrusted: every client-sent forwarding header is dropped; trusted: chained and kept', async (t) => {
  const sent = { 'x-forwarded-for': '1.1.1.1, 2.2.2.2', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'f', forwarded: 'for=1.1.1.1' }
  const untrusted = upstreamRequestHeaders(sent, 'id', info)
  t.same(untrusted, { 'x-forwarded-for': '10.1.2.3', 'x-forwarded-proto': 'https', 'x-request-id': 'id' })
  const trusted = upstreamRequestHeaders(sent, 'id', { ...info, trustForwardedHeaders: true })
  t.equal(trusted['x-forwarded-for'], '1.1.1.1, 2.2.2.2, 10.1.2.3')
  t.equal(trusted['x-forwarded-proto'], 'http')
  t.equal(trusted['x-forwarded-host'], 'f')
  t.equal(trusted.forwarded, 'for=1.1.1.1')
})

t.test('request ids: sane client ids are kept, others replaced', async (t) => {
  t.equal(requestIdFrom('abc-123_X.y'), 'abc-123_X.y')
  t.equal(requestIdFrom('x'.repeat(128)), 'x'.repeat(128))
  for (const bad of [undefined, '', 'has space', 'x'.repeat(129), 'tab\there', 'ünïcode', ['a', 'b']]) {
    t.match(requestIdFrom(bad), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, JSON.stringify(bad))
  }
  t.not(requestIdFrom(undefined), requestIdFrom(undefined), 'each generated id is new')
})

t.test('new request ids are random version-4 UUIDs, across the refills of their random bytes', async (t) => {
  const ids = Array.from({ length: 1000 }, () => newRequestId()) // several fills of 128
  for (const id of ids) if (!/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id)) t.fail(`not a v4 UUID: ${id}`)
  t.equal(new Set(ids).size, ids.length, 'no id repeats')
  // every random position takes many values: no byte written twice or left out
  for (let pos = 0; pos < 36; pos++) {
    if ([8, 13, 14, 18, 23].includes(pos)) continue // dashes, the version digit
    const values = new Set(ids.map((id) => id[pos]))
    t.ok(values.size >= (pos === 19 ? 4 : 16), `position ${pos}: ${values.size} values`)
  }
})

t.test('header names with underscores: dropped and listed by default, forwarded when allowed', async (t) => {
  const sent = { 'x_client_subject': 'CN=admin', 'x-client-subject': 'CN=billing', x_forwarded_for: '6.6.6.6', 'x-forwarded_host': 'evil', accept: '*/*' }
  const drop = { ...info, dropped: undefined as string[] | undefined }
  const dropped = upstreamRequestHeaders(sent, 'id', drop)
  t.same(Object.keys(dropped).sort(), ['accept', 'x-client-subject', 'x-forwarded-for', 'x-forwarded-proto', 'x-request-id'])
  t.same(drop.dropped, ['x_client_subject', 'x_forwarded_for', 'x-forwarded_host'], 'and said which')
  const allow = { ...info, headersWithUnderscores: 'allow' as const, dropped: undefined as string[] | undefined }
  const allowed = upstreamRequestHeaders(sent, 'id', allow)
  t.equal(allowed.x_client_subject, 'CN=admin')
  t.equal(allow.dropped, undefined)
  const clean = { ...info, dropped: undefined as string[] | undefined }
  upstreamRequestHeaders({ accept: '*/*' }, 'id', clean)
  t.equal(clean.dropped, undefined, 'nothing to list: no list made')
})
