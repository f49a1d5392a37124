// The listener's request checks as tables, no sockets (the same cases through real sockets are
// in test/scenarios/hostile.test.ts and http2.test.ts).
import t from 'tap'
import { checkHttp1Request, checkHttp2Request, checkUpgradeRequest, countRegularHeaders, parserErrorCode } from '../../src/server/validate.js'

t.test('HTTP/1: versions, Host and the request-target', async (t) => {
  const host = (value: string) => ['Host', value]
  // [what, version, raw headers, target, expected: refusal code | forwarded target | null (as is)]
  const table: Array<[string, string, string[], string, string | null]> = [
    ['a path', '1.1', host('app.local'), '/a?b=1', null],
    ['HTTP/1.0 without Host', '1.0', [], '/', null],
    ['HTTP/1.1 without Host', '1.1', [], '/', 'bad_request'],
    ['two Host headers', '1.1', [...host('a'), ...host('a')], '/', 'bad_request'],
    ['Host with userinfo', '1.1', host('user@evil'), '/', 'bad_request'],
    ['Host with a path', '1.1', host('a/b'), '/', 'bad_request'],
    ['Host with a port', '1.1', host('app.local:8443'), '/', null],
    ['IPv6 Host', '1.1', host('[::1]:8443'), '/', null],
    ['HTTP/2.0 on the HTTP/1 parser', '2.0', host('a'), '/', 'http_version_not_supported'],
    ['HTTP/0.9', '0.9', host('a'), '/', 'http_version_not_supported'],
    ['OPTIONS *', '1.1', host('a'), '*', 'bad_request'],
    // RFC 9112 6.3: a body whose length nothing can tell (Node's parser says so only after the
    // request was handed over)
    ['Transfer-Encoding: xchunked', '1.1', [...host('a'), 'Transfer-Encoding', 'xchunked'], '/', 'bad_request'],
    ['Transfer-Encoding: gzip alone', '1.1', [...host('a'), 'transfer-encoding', 'gzip'], '/', 'bad_request'],
    ['Transfer-Encoding: gzip, chunked (the limits layer answers 501)', '1.1', [...host('a'), 'Transfer-Encoding', 'gzip, chunked'], '/', null],
    ['Transfer-Encoding: Chunked', '1.1', [...host('a'), 'Transfer-Encoding', ' Chunked'], '/', null],
    ['authority-form', '1.1', host('a'), 'a:443', 'bad_request'],
    ['absolute-form naming the Host', '1.1', host('App.Local'), 'http://app.local/p?q', '/p?q'],
    ['absolute-form with no path', '1.1', host('app.local'), 'https://app.local', '/'],
    ['absolute-form naming another authority', '1.1', host('app.local'), 'http://evil/p', 'bad_request'],
  ]
  for (const [what, httpVersion, rawHeaders, url, expected] of table) {
    const result = checkHttp1Request({ httpVersion, rawHeaders, url })
    const got = result === null || typeof result === 'string' ? result : result.code
    t.equal(got, expected, what)
    if (result !== null && typeof result !== 'string') t.ok(result.detail.length > 0, `${what}: says why`)
  }
})

t.test('HTTP/2: methods, authority and :path', async (t) => {
  const ok = { ':authority': 'app.local', ':path': '/' }
  const table: Array<[string, string, Record<string, string>, string | null]> = [
    ['a GET', 'GET', ok, null],
    ['Host alone', 'GET', { host: 'app.local', ':path': '/' }, null],
    ['Host agreeing with :authority, other case', 'GET', { ...ok, host: 'APP.local' }, null],
    ['Host naming another authority', 'GET', { ...ok, host: 'evil' }, 'bad_request'],
    ['neither', 'GET', { ':path': '/' }, 'bad_request'],
    ['userinfo in :authority', 'GET', { ...ok, ':authority': 'user@evil' }, 'bad_request'],
    ['lower-case method', 'get', ok, 'bad_request'],
    ['unknown method', 'BREW', ok, 'bad_request'],
    ['OPTIONS *', 'OPTIONS', { ...ok, ':path': '*' }, 'bad_request'],
  ]
  for (const [what, method, headers, expected] of table) t.equal(checkHttp2Request({ method, headers })?.code ?? null, expected, what)
})

t.test("the parser's refusals as catalogue codes; pseudo-headers are not counted", async (t) => {
  t.equal(parserErrorCode({ code: 'HPE_HEADER_OVERFLOW' }), 'headers_too_large')
  t.equal(parserErrorCode({ code: 'ERR_HTTP_REQUEST_TIMEOUT' }), 'request_timeout')
  t.equal(parserErrorCode({ code: 'HPE_INVALID_METHOD' }), 'bad_request')
  t.equal(parserErrorCode({}), 'bad_request')
  t.equal(countRegularHeaders([':method', 'GET', ':path', '/', 'accept', '*/*', 'cookie', 'a']), 2)
})

t.test('upgrades the proxy will not tunnel: h2c, and a handshake carrying a body', async (t) => {
  const table: Array<[string, string, Record<string, string>, string | null]> = [
    ['websocket', 'websocket', {}, null],
    ['another protocol', 'foo/2', {}, null],
    ['h2c', 'h2c', {}, 'bad_request'],
    ['H2C', 'H2C', {}, 'bad_request'],
    ['a Content-Length', 'websocket', { 'content-length': '3' }, 'bad_request'],
    ['chunked', 'websocket', { 'transfer-encoding': 'chunked' }, 'bad_request'],
  ]
  for (const [what, protocol, headers, expected] of table) t.equal(checkUpgradeRequest(protocol, headers)?.code ?? null, expected, what)
})
