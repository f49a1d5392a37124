// The admin status page (GET /) in a real headless Chromium: the real proxy on loopback with TLS
// in front of two fake backends split 90/10 with a circuit breaker, real traffic through it, and
// assertions on what the page shows as it refreshes itself from /status. Needs Chromium at
// /usr/bin/chromium (.ci/run installs it): without it the test fails under CI and is skipped
// elsewhere, saying why.
// To regenerate the screenshot in the docs (the page with the split and the canary's breaker open):
//   STATUS_PAGE_SCREENSHOT=docs/status-page.png npx tap --disable-coverage test/admin/status-page.test.ts
// (about 40 s longer: the traffic is then spread over a few of the chart's 10 s buckets).
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import https from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { request } from '../fixtures/client.js'
import { startProxy } from '../fixtures/proxy.js'
import { devCerts } from '../fixtures/tls.js'
import { fakeUpstream } from '../fixtures/upstream.js'

const CHROMIUM = '/usr/bin/chromium'
const missing = existsSync(CHROMIUM) ? undefined : `no Chromium at ${CHROMIUM}: install the Debian package chromium (.ci/run does)`

/** Polls the text of `selector` until `ok` holds or `ms` pass (the page refreshes every 2 s). */
async function textOf(page: Page, selector: string, ok: (text: string) => boolean, ms = 6_000): Promise<string> {
  const deadline = Date.now() + ms
  let text = ''
  while (Date.now() < deadline) {
    text = (await page.locator(selector).first().textContent({ timeout: 1_000 }).catch(() => null)) ?? ''
    if (ok(text)) break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return text
}

/** The "share, last minute" cell of a backend's row. */
const share = (backend: string) => `tr[data-backend="${backend}"] td:nth-child(8)`

if (missing && process.env.CI) t.fail(`${missing}; CI must run the status page test`)
else t.test('the status page shows the split, then the canary breaker open, from live /status', { skip: missing ?? false }, async (t) => {
  let canaryFails = false
  /** What the canary's health checks get: a status, or the connection reset. */
  let canaryHealth: number | 'reset' = 200
  const app = await fakeUpstream().listen()
  const canary = await fakeUpstream()
    .route('/work', (_req, res) => res.writeHead(canaryFails ? 503 : 200).end('canary'))
    .route('/healthz', (req, res) => (canaryHealth === 'reset' ? req.socket.destroy() : res.writeHead(canaryHealth).end()))
    .listen()
  t.teardown(() => Promise.all([app.close(), canary.close()]))
  const { ca, server } = devCerts()
  const dir = t.testdir({ 'tls.crt': server.cert, 'tls.key': server.key })
  // Generous timeouts: three slow probes in a row on a loaded machine would flip a backend.
  const healthCheck = { intervalMs: 200, timeoutMs: 200 }
  const proxy = await startProxy(app.url, {
    listener: { tls: { certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key` } },
    backends: [
      { name: 'app', url: app.url, weight: 90, healthCheck, concurrency: { fixed: 50 } },
      // failed checks show for a while before they flip it (after 100 in a row: 20 s)
      { name: 'canary', url: canary.url, weight: 10, gatesReadiness: false, healthCheck: { ...healthCheck, path: '/healthz', unhealthyThreshold: 100 } },
    ],
    circuitBreaker: { volumeThreshold: 10, resetTimeoutMs: 60_000 },
    routes: [
      { name: 'internal', match: { pathPrefix: '/internal/' }, direct: { status: 404, body: 'no\n' } },
      { name: 'work', match: { path: '/work', methods: ['GET'] }, fault: { abort: { status: 503, percent: 0.1 } } },
    ],
  })
  t.teardown(() => proxy.close())

  const agent = new https.Agent({ keepAlive: true, maxSockets: 4 })
  t.teardown(() => agent.destroy())
  /** `n` GETs of /work over 4 keep-alive TLS connections. */
  const send = (n: number) => {
    let left = n
    const worker = async () => {
      while (left-- > 0) await request(`${proxy.url.replace('http:', 'https:')}/work`, { agent, tls: { ca: ca.cert } })
    }
    return Promise.all(Array.from({ length: 4 }, worker))
  }
  // For the screenshot, traffic over five 10 s buckets so that the chart has something to show.
  const rounds = process.env.STATUS_PAGE_SCREENSHOT ? 5 : 1
  for (let i = 0; i < rounds; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 10_000))
    await send(150 + 50 * (i % 2))
  }
  const tooManyHeaders = Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`x-h${i}`, '1']))
  const refused = await request(`${proxy.url.replace('http:', 'https:')}/work`, { tls: { ca: ca.cert }, headers: tooManyHeaders })
  t.equal(refused.status, 431, 'one request refused, to show among the rejections')

  const userDataDir = mkdtempSync(join(tmpdir(), 'sidecar-status-page-'))
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1200, height: 900 },
    timeout: 20_000,
  })
  t.teardown(async () => {
    await browser.close()
    rmSync(userDataDir, { recursive: true, force: true })
  })
  const page = browser.pages()[0] ?? (await browser.newPage())
  const problems: string[] = []
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`)
  })
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`))
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`)
  })

  const response = await page.goto(`${proxy.adminUrl}/`, { timeout: 10_000 })
  t.equal(response?.status(), 200)
  t.match(response?.headers()['content-security-policy'], /^default-src 'none'; script-src 'sha256-[^']+'; style-src 'sha256-[^']+'; connect-src 'self'/)

  const appShare = parseFloat(await textOf(page, share('app'), (s) => parseFloat(s) > 0))
  const canaryShare = parseFloat(await textOf(page, share('canary'), (s) => parseFloat(s) > 0))
  t.ok(appShare > 70 && canaryShare > 0, `both got a share of the last minute: app ${appShare}%, canary ${canaryShare}%`)
  t.match(await page.locator('tr[data-backend="app"]').textContent(), /^app.*90 \(90%\)healthy.*closed/, "the app's weight, health and breaker")
  const connections = Number(await page.locator('tr[data-backend="app"] td:nth-child(6)').textContent())
  t.ok(connections >= 1, `the connections open to the app: ${connections} (its health checks' at least)`)
  t.match(await page.locator('tr[data-backend="canary"]').textContent(), /^canary.*10 \(10%\)healthy.*closed/, "the canary's")
  t.equal(await page.locator('#ready').textContent(), 'READY')
  t.equal(await page.locator('#chart rect.requests').count(), 30, 'one bar per 10 s bucket over 5 minutes')
  t.ok(await page.locator('#concurrency-section').isVisible(), 'a backend with a concurrency limit: its chart shows')
  t.equal(await page.locator('#concurrency svg').count(), 1, "the app's alone (the canary has no limit)")
  t.equal(await page.locator('#concurrency svg[data-backend="app"] polyline.limit').count(), 1)
  t.equal(await page.locator('#concurrency svg[data-backend="app"] polyline.active').count(), 1)
  t.match(await page.locator('#concurrency svg[data-backend="app"]').textContent(), /app: limit 50, in flight \d+, waiting 0/)
  t.match(await page.locator('tr[data-backend="app"] td:nth-child(5)').textContent(), /^\d+ \/ 0 \(limit 50\)$/, 'and the limit beside in flight')
  t.match(await page.locator('#rates').textContent(), /^Last minute: \d+\.\d requests\/s, 0\.\d% 5xx$/)
  t.match(await page.locator('#retries').textContent(), /rejectedheaders_too_large1/)
  t.match(await page.locator('#cert').textContent(), /CN=localhost.*\d+ hours left/, 'a one-day certificate, in hours')
  t.equal(await page.locator('#cert .badge').getAttribute('class'), 'badge bad', 'and flagged: it expires within 3 days')
  t.match(await page.locator('#config').textContent(), proxy.app.config().version)
  t.match(await page.locator('#config').textContent(), /Tracingoff/, 'tracing: off')
  t.equal(await page.locator('#routes tr').count(), 3, 'the route table: two routes and the default')
  t.match(await page.locator('tr[data-route="internal"]').textContent(), /^internal\/internal\/\*0 \/ 0/)
  t.match(await page.locator('tr[data-route="work"]').textContent(), /^workGET \/work\d+ \/ \d+abort 503 0\.1%/, 'the route that took the traffic, and its fault')
  t.match(await page.locator('tr[data-route="default"]').textContent(), /^defaultevery other request/)

  // The health badge is the verdict, which takes unhealthyThreshold failures in a row to flip;
  // the reason beside it is only the latest check, and says so.
  const health = 'tr[data-backend="canary"] td:nth-child(3)'
  const badge = () => page.locator(`${health} .badge`).getAttribute('class')
  t.equal(await textOf(page, health, (s) => s.includes('answered 200')), 'healthylast check: GET /healthz answered 200')
  t.equal(await badge(), 'badge ok')
  canaryHealth = 503
  t.equal(
    await textOf(page, health, (s) => s.includes('503')),
    'healthy, last check failedlast check: GET /healthz answered 503',
    'a 503 from the latest check beside a healthy verdict: said, and labelled as the last check',
  )
  t.equal(await badge(), 'badge warn', 'the healthy badge in a warning shade')
  canaryHealth = 'reset'
  const failed = await textOf(page, health, (s) => s.includes('failed:'))
  t.match(failed, /^healthy, last check failedlast check: GET \/healthz failed: \w+: /, `a latest check that got no answer: ${failed}`)
  t.equal(await badge(), 'badge warn')
  canaryHealth = 200
  t.equal(await textOf(page, health, (s) => s.includes('answered 200')), 'healthylast check: GET /healthz answered 200', 'and back')
  t.equal(await badge(), 'badge ok')
  t.equal(proxy.app.status().backends[1]!.health?.healthy, true, 'healthy throughout')

  // The canary starts failing: its 503s are retried elsewhere until its breaker opens.
  canaryFails = true
  for (let i = 0; i < 20 && proxy.app.status().backends[1]!.breaker !== 'open'; i++) await send(50)
  t.equal(proxy.app.status().backends[1]!.breaker, 'open', 'the traffic opened the breaker')
  const opened = await textOf(page, 'tr[data-backend="canary"]', (s) => s.includes('open'))
  t.match(opened, /open/, `the page shows it: ${opened}`)
  t.equal(await page.locator('tr[data-backend="canary"]').getAttribute('class'), 'open', 'the whole row is highlighted')
  t.equal(await page.locator('tr[data-backend="canary"] .badge.bad').last().textContent(), 'open')
  t.match(await page.locator('#retries').textContent(), /retry after canarygateway-error\d+/, 'the retries it caused')
  t.ok(parseFloat((await page.locator(share('canary')).textContent()) ?? '') > 0, 'the split of the last minute is still there')
  if (process.env.STATUS_PAGE_SCREENSHOT) await page.screenshot({ path: process.env.STATUS_PAGE_SCREENSHOT })

  // Data from the runtime is text, never markup.
  proxy.app.readiness.hold('test-latch', '<img src=x onerror="document.title=1">held <b>by</b> a test')
  t.match(await textOf(page, '#latches', (s) => s.includes('test-latch')), 'test-latch<img src=x onerror="document.title=1">held <b>by</b> a test')
  t.equal(await page.locator('#latches img, #latches b').count(), 0, 'no element was made from it')
  t.equal(await page.locator('#ready').textContent(), 'NOT READY')
  t.same(problems, [], 'no console errors, no failed requests')

  // The proxy goes away: the page says so and keeps the last data.
  await proxy.close()
  t.match(await textOf(page, '#banner', (s) => s !== ''), /^Cannot reach the proxy \(.+\)\. Showing the last data, from /)
  t.equal(await page.locator('#ready').textContent(), 'UNKNOWN', 'its readiness is unknown, not the last NOT READY')
  t.equal(await page.locator('#ready').getAttribute('class'), 'badge unknown')
  t.equal(await page.locator('#backends tr').count(), 2, 'the last backends are still shown')
})
