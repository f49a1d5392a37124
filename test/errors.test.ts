import t from 'tap'
import { ERRORS, SidecarError, isErrorCode, toSidecarError } from '../src/errors.js'

t.test('the catalogue: every code has a status and a message, and statuses follow the contract', async (t) => {
  const expected: Record<string, number> = {
    bad_request: 400,
    request_timeout: 408,
    body_too_large: 413,
    headers_too_large: 431,
    method_not_allowed: 405,
    http_version_not_supported: 505,
    unsupported_transfer_encoding: 501,
    client_closed: 499,
    internal: 500,
    upstream_refused: 502,
    upstream_unreachable: 502,
    upstream_reset: 502,
    upstream_bad_response: 502,
    upstream_connect_timeout: 504,
    upstream_timeout: 504,
    upstream_unhealthy: 503,
    circuit_open: 503,
    no_backend: 503,
    local_resources_exhausted: 503,
    overloaded: 503,
  }
  t.same(Object.fromEntries(Object.entries(ERRORS).map(([code, e]) => [code, e.status])), expected)
  for (const [code, entry] of Object.entries(ERRORS)) {
    t.match(code, /^[a-z_]+$/, `${code} is lower_snake (never clashes with Node's UPPER codes)`)
    t.ok(entry.message.length > 10, `${code} has a message`)
  }
})

t.test('SidecarError carries code, status and detail', async (t) => {
  const e = new SidecarError('upstream_timeout', { detail: 'after 300 ms', cause: new Error('x') })
  t.equal(e.code, 'upstream_timeout')
  t.equal(e.status, 504)
  t.equal(e.message, `${ERRORS.upstream_timeout.message}: after 300 ms`)
  t.equal((e.cause as Error).message, 'x')
})

t.test('toSidecarError keeps catalogue codes and turns the rest into internal', async (t) => {
  const own = new SidecarError('body_too_large')
  t.equal(toSidecarError(own), own)
  t.equal(toSidecarError(Object.assign(new Error('y'), { code: 'upstream_reset' })).code, 'upstream_reset')
  t.equal(toSidecarError(Object.assign(new Error('z'), { code: 'ECONNRESET' })).code, 'internal')
  t.equal(toSidecarError(null).code, 'internal')
  t.equal(toSidecarError('a string').code, 'internal')
  t.notOk(isErrorCode('toString'), 'inherited names are not codes')
})
