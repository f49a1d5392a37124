import http from 'node:http'
import t from 'tap'
import { systemClock } from '../src/clock.js'
import { ERRORS, SidecarError, StartupError, exitCodeOf, isErrorCode, toSidecarError, type ErrorCode, type RetryOn } from '../src/errors.js'
import { createRespondLayer } from '../src/layers/respond.js'
import { createRetryLayer, mayResend, retryReason, type RetryOptions } from '../src/layers/retry.js'
import { localReply } from '../src/pipeline/local-reply.js'
import { Listener } from '../src/server/listener.js'
import { Breaker } from '../src/upstream/breaker.js'
import { request } from './fixtures/client.js'
import { fakeClock } from './fixtures/clock.js'
import { LISTENER_OPTIONS, context, deps, drive, fromAsync, proxyRequest, response, scripted, through } from './fixtures/pipeline.js'


t.test('the catalogue: every code has a status and a message, and statuses follow the contract', async (t) => {
  const expected: Record<string, number> = {
    bad_request: 400,
    request_timeout: 408,
    body_too_large: 413,
    headers_too_large: 431,
    method_not_allowed: 405,
    http_version_not_supported: 505,
    unsupported_transfer_encoding: 501,
    client_over_limit: 429,
    rate_limited: 429,
    client_slow: 499,
    client_closed: 499,
    internal: 500,
    upstream_refused: 502,
    upstream_unreachable: 502,
    upstream_tls: 502,
    upstream_reset: 502,
    upstream_bad_response: 502,
    upstream_connect_timeout: 504,
    upstream_timeout: 504,
    upstream_unhealthy: 503,
    circuit_open: 503,
    no_backend: 503,
    local_resources_exhausted: 503,
    overloaded: 503,
    concurrency_limited: 503,
    upstream_busy: 503,
    too_many_tunnels: 503,
    too_many_connections: 503,
    stream_reset_flood: 400,
    fault_injected: 503, // the default: each fault.abort names its own status
    proxy_overloaded: 503,
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

// ---- the catalogue's meaning drives every policy ------------------------------------------

t.test('every entry: the breaker, retry, listener and gRPC answer decide from its fields', async (t) => {
  const d = deps()
  const retryOpts: RetryOptions = {
    attempts: 2,
    retryOn: ['connect-failure', 'refused', 'reset', 'gateway-error'],
    statusCodes: [],
    methods: ['GET'],
    backoff: { baseMs: 1, maxMs: 1 },
    budget: { ratio: 1, minPerSecond: 1000, windowMs: 10_000 },
    maxReplayBytes: 1024,
    requestTimeoutMs: 15_000,
  }
  const codes = Object.keys(ERRORS) as ErrorCode[]
  // the listener, with a pipeline whose last step fails with the code named in the path
  const handler = createRespondLayer()(
    fromAsync(async (req) => {
      throw new SidecarError(req.path.slice(1) as ErrorCode)
    }),
  )
  const listener = new Listener(LISTENER_OPTIONS, handler, { ...d, clock: systemClock })
  const { port } = await listener.listen()
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => {
    agent.destroy()
    return listener.close(1000)
  })

  for (const code of codes) {
    const entry = ERRORS[code]
    // breaker: one failure of this kind with volumeThreshold 1 opens it, or not
    const breaker = new Breaker('app', { errorThresholdPercentage: 1, volumeThreshold: 1, rollingWindowMs: 10_000, resetTimeoutMs: 1000 }, { ...d, clock: fakeClock() })
    await through(breaker, async () => Promise.reject(new SidecarError(code))).catch(() => undefined)
    t.equal(breaker.state === 'open', entry.breaker, `${code}: breaker ${entry.breaker ? 'counts' : 'ignores'} it`)
    breaker.shutdown()

    // retry: a GET is tried again exactly when the entry names a retryOn condition; a POST only
    // when, besides, the entry says the app never got it
    for (const method of ['GET', 'POST']) {
      const next = scripted(new SidecarError(code), response(200))
      const retry = drive(createRetryLayer(retryOpts, { metrics: d.metrics, clock: fakeClock(), random: () => 0 }))(next)
      await retry(proxyRequest({ method }), context({ backend: 'app' })).catch(() => undefined)
      const expected = entry.retryOn.length > 0 && (method === 'GET' || !entry.mayHaveReachedApp)
      t.equal(next.calls.length === 2, expected, `${code}: a ${method} is ${expected ? '' : 'not '}retried`)
    }

    // listener: the connection closes after the answer exactly when the entry says so
    const reply = await request(`http://127.0.0.1:${port}/${code}`, { agent })
    t.equal(reply.status, entry.status, `${code}: its status`)
    t.equal(reply.headers['x-sidecar-error'], code)
    t.equal(reply.headers.connection === 'close', entry.close, `${code}: connection ${entry.close ? 'closed' : 'kept'}`)

    // gRPC: the answer a gRPC client can read carries the entry's status
    const grpc = localReply(new SidecarError(code), { requestId: 'r', grpc: true })
    t.same([grpc.status, grpc.headers['grpc-status']], [200, String(entry.grpcStatus)], `${code}: grpc-status ${entry.grpcStatus}`)
  }
})

t.test('flip a field in a copy of an entry: the retry decision follows the copy', async (t) => {
  const all = new Set<RetryOn>(['connect-failure', 'refused', 'reset', 'gateway-error'])
  const refused = ERRORS.upstream_refused
  t.equal(retryReason(refused, all), 'refused')
  t.equal(retryReason({ ...refused, retryOn: [] }, all), null, 'no condition: never retried')
  t.equal(retryReason({ ...refused, retryOn: ['reset'] }, new Set(['refused'])), null, 'a condition not configured: not retried')
  t.equal(retryReason(ERRORS.bad_request, all), null)
  t.equal(retryReason({ ...ERRORS.bad_request, retryOn: ['gateway-error'] }, all), 'gateway-error')
  t.equal(mayResend(refused, false), true, 'a POST whose connection was refused: the app never got it')
  t.equal(mayResend({ ...refused, mayHaveReachedApp: true }, false), false)
  t.equal(mayResend(ERRORS.upstream_reset, false), false)
  t.equal(mayResend({ ...ERRORS.upstream_reset, mayHaveReachedApp: false }, false), true)
  t.equal(mayResend(undefined, true), true, 'an idempotent request may go again whatever happened')
  t.equal(mayResend(undefined, false), false, 'an answer means the app got it')
})

t.test('only upstream-blamed entries count against a backend', async (t) => {
  for (const [code, entry] of Object.entries(ERRORS)) {
    if (entry.breaker) t.equal(entry.blame, 'upstream', `${code}: counted, so blamed on the upstream`)
    if (entry.blame === 'client') t.equal(entry.breaker, false, `${code}: the client's doing never opens a breaker`)
  }
})

t.test('start-up errors carry their exit code', async (t) => {
  t.equal(exitCodeOf(new StartupError('usage', 'x')), 2)
  t.equal(exitCodeOf(new StartupError('config_invalid', 'x')), 2)
  t.equal(exitCodeOf(new StartupError('tls_material_invalid', 'x')), 2)
  t.equal(exitCodeOf(new StartupError('listen_failed', 'x')), 1)
  t.equal(exitCodeOf(new Error('a bug')), 1)
  t.equal(exitCodeOf(Object.assign(new Error('x'), { code: 'EADDRINUSE' })), 1)
})
