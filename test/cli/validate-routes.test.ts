// `validate` prints the route table in the order it is matched, the default last.
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { main } from '../../src/main.js'

t.test('validate prints the routes', async (t) => {
  const dir = t.testdir({
    'routes.yaml': `
backends:
  - name: app
    url: http://127.0.0.1:8080
  - name: canary
    url: http://10.0.0.2:8080
    weight: 10
routes:
  - name: internal
    match: { pathPrefix: /internal/ }
    direct: { status: 404 }
  - name: upload
    match: { pathPrefix: /upload/, methods: [POST, PUT] }
    timeoutMs: 0
    limits: { maxBodyBytes: 1048576 }
  - name: login
    match: { path: /login, headers: { x-tenant: a, x-key: { regex: "^k" } } }
    retry: { attempts: 1 }
    rateLimit: { requestsPerSecond: 5, key: client }
  - name: orders
    match: { pathRegex: "^/orders/[0-9]+$" }
    timeoutMs: 500
    weights: { app: 1 }
  - name: rest
`,
  })
  const out: string[] = []
  const sink: Io = { out: (l) => out.push(l), err: (l) => out.push(l) }
  t.equal(await main(['validate', '--config', `${dir}/routes.yaml`], sink), 0)
  const text = out.join('\n')
  t.match(
    text,
    [
      'routes (first match wins):',
      '  internal  /internal/*  -> answers 404 itself',
      '  upload  POST,PUT /upload/*  -> no timeout, body up to 1048576 bytes',
      '  login  /login x-tenant: a x-key: ~^k  -> attempts 1, 5/s burst 5 per client',
      '  orders  ~^/orders/[0-9]+$  -> timeout 500 ms, weights app=1',
      '  rest  every request',
      '  default  every other request: the top-level settings',
    ].join('\n'),
  )
})
