// The status page served at GET / on the admin port: one self-contained HTML document (no CDN,
// no fonts, no framework) whose script fetches GET /status every 2 s and draws it with plain DOM
// calls. Everything from /status goes in through textContent, never as HTML: backend names and
// latch reasons come from config and runtime. It lives in a module so that tsc ships it in dist/;
// the Content-Security-Policy allows exactly this script and this style, by their hashes.
import { createHash } from 'node:crypto'

const STYLE = `
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2433; background: #f3f5f8; }
  header { display: flex; align-items: center; gap: 16px; padding: 12px 24px; background: #1d2433; color: #fff; }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  header .updated { margin-left: auto; color: #b8c0d0; font-size: 13px; }
  main { padding: 16px 24px; display: grid; grid-template-columns: 3fr 2fr; gap: 16px; }
  section { background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 12px 16px; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: #5b6579; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #eef1f5; vertical-align: top; }
  th { font-size: 12px; color: #5b6579; font-weight: 600; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  .small { font-size: 12px; color: #5b6579; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
  .ok { background: #dcf5e3; color: #17692f; }
  .warn { background: #fff0c7; color: #7a5300; }
  .bad { background: #d92d20; color: #fff; }
  .unknown { background: #d5dae3; color: #3d4657; }
  tr.open td { background: #fdecea; }
  .share { display: flex; align-items: center; gap: 6px; }
  .bar { width: 80px; height: 8px; background: #eef1f5; border-radius: 4px; overflow: hidden; }
  .bar span { display: block; height: 100%; background: #3b6fd8; }
  #banner { display: none; grid-column: 1 / -1; background: #d92d20; color: #fff; padding: 10px 16px; border-radius: 6px; font-weight: 600; }
  body.stale #banner { display: block; }
  body.stale section { opacity: .55; }
  svg { display: block; width: 100%; height: auto; }
  svg .requests { fill: #9db6ea; }
  svg .errors { fill: #d92d20; }
  svg .axis { stroke: #c8cfdb; }
  svg .limit { fill: none; stroke: #d97706; stroke-width: 2; }
  svg .active { fill: none; stroke: #2f5fbf; stroke-width: 2; }
  svg text { font-size: 11px; fill: #5b6579; }
  .legend span { margin-right: 12px; }
  .legend .requests::before, .legend .errors::before { content: ""; display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
  .legend .requests::before { background: #9db6ea; }
  .legend .errors::before { background: #d92d20; }
  .legend .limit::before, .legend .active::before { content: ""; display: inline-block; width: 10px; height: 2px; margin: 0 4px 3px 0; }
  .legend .limit::before { background: #d97706; }
  .legend .active::before { background: #2f5fbf; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
  dt { color: #5b6579; }
  dd { margin: 0; overflow-wrap: anywhere; }
`

const SCRIPT = String.raw`
'use strict'
const REFRESH_MS = 2000
const SVG = 'http://www.w3.org/2000/svg'
let lastGood = null // the time of the last /status that arrived and was drawn

/** An element with a class and text (text only ever through textContent). */
function el(tag, className, text) {
  const e = document.createElement(tag)
  if (className) e.className = className
  if (text !== undefined) e.textContent = String(text)
  return e
}

/** A table row; each cell is { text } or { node }, with an optional className. */
function row(cells) {
  const tr = el('tr')
  for (const c of cells) {
    const td = el('td', c.className)
    if (c.node) td.append(c.node)
    else td.textContent = String(c.text)
    tr.append(td)
  }
  return tr
}

const time = (d) => d.toLocaleTimeString()

async function refresh() {
  try {
    let status
    try {
      const res = await fetch('/status', { cache: 'no-store', signal: AbortSignal.timeout(REFRESH_MS) })
      if (!res.ok) throw new Error('GET /status answered ' + res.status)
      status = await res.json()
    } catch (err) {
      return failed('Cannot reach the proxy', err)
    }
    try {
      render(status)
    } catch (err) {
      return failed('Cannot show what /status answered', err)
    }
    lastGood = new Date()
    document.body.classList.remove('stale')
    document.getElementById('updated').textContent = 'updated ' + time(lastGood) + ', every ' + REFRESH_MS / 1000 + ' s'
  } finally {
    setTimeout(refresh, REFRESH_MS)
  }
}

/** A refresh that failed (what, and the error why): a banner over the last data drawn. */
function failed(what, err) {
  document.body.classList.add('stale')
  // the last verdict drawn is not known to be the proxy's readiness now (it may be down, or not ready)
  const badge = document.getElementById('ready')
  badge.textContent = 'UNKNOWN'
  badge.className = 'badge unknown'
  badge.title = what.toLowerCase() + ': its readiness is unknown'
  document.getElementById('banner').textContent =
    what + ' (' + err.message + '). ' +
    (lastGood ? 'Showing the last data, from ' + time(lastGood) + '. ' : '') + 'Retrying every ' + REFRESH_MS / 1000 + ' s.'
}

function render(s) {
  renderReadiness(s)
  renderBackends(s)
  renderChart(s.series, s.lastMinute)
  renderConcurrency(s.backends)
  renderRetries(s.retries, s.rejections)
  renderCertificate(s.certificate)
  renderRoutes(s.routes, s.mirror)
  renderConfig(s.config, s.tracing)
}

function renderReadiness(s) {
  const badge = document.getElementById('ready')
  badge.textContent = s.ready ? 'READY' : 'NOT READY'
  badge.className = 'badge ' + (s.ready ? 'ok' : 'bad')
  badge.title = ''
  const latches = Object.entries(s.holding)
  const body = document.getElementById('latches')
  body.replaceChildren(...latches.map(([name, reason]) => row([{ text: name }, { text: reason }])))
  if (latches.length === 0) body.append(row([{ text: 'none: no readiness latch is held', className: 'small' }, { text: '' }]))
}

function renderBackends(s) {
  const rows = s.backends.map((b) => {
    const retries = Object.values(s.retries.byBackend[b.name] || {}).reduce((a, n) => a + n, 0)
    const name = el('div')
    name.append(el('strong', '', b.name), el('div', 'small', b.url + (b.gatesReadiness ? ' · gates readiness' : '')))
    const share = el('div', 'share')
    const bar = el('div', 'bar')
    const fill = el('span')
    fill.style.width = b.lastMinute.percent + '%'
    bar.append(fill)
    share.append(bar, el('span', '', b.lastMinute.percent + '%'))
    const tr = row([
      { node: name },
      { text: b.weight + ' (' + b.weightPercent + '%)', className: 'num' },
      { node: renderHealth(b.health) },
      { node: el('span', 'badge ' + ({ closed: 'ok', 'half-open': 'warn', open: 'bad' }[b.breaker] ?? 'unknown'), b.breaker) },
      { text: b.inFlight.active + ' / ' + b.inFlight.waiting + (b.concurrency ? ' (limit ' + b.concurrency.limit + ')' : ''), className: 'num' },
      { text: b.connections, className: 'num' },
      { text: b.lastMinute.requests + ' / ' + b.lastMinute.errors, className: 'num' },
      { node: share },
      { text: retries, className: 'num' },
    ])
    tr.dataset.backend = b.name
    if (b.breaker === 'open') tr.className = 'open'
    return tr
  })
  document.getElementById('backends').replaceChildren(...rows)
}

/**
 * A backend's health: the badge is the verdict, which takes unhealthyThreshold failed checks in a
 * row to turn unhealthy (healthyThreshold passes to turn back); the reason is the latest check
 * only, and says so. A verdict the latest check disagrees with gets a warning shade.
 */
function renderHealth(h) {
  const box = el('div')
  if (!h || h.checks === 0) {
    box.append(el('span', 'badge bad', 'unhealthy'), el('div', 'small', 'not checked yet'))
    return box
  }
  if (h.healthy !== h.lastCheckPassed) box.append(el('span', 'badge warn', h.healthy ? 'healthy, last check failed' : 'unhealthy, last check passed'))
  else box.append(el('span', 'badge ' + (h.healthy ? 'ok' : 'bad'), h.healthy ? 'healthy' : 'unhealthy'))
  box.append(el('div', 'small', 'last check: ' + h.reason))
  return box
}

/** Each backend's concurrency limit and its attempts in flight, as this page saw them at each
 *  refresh (the last 5 minutes at most; /status keeps no history of them). */
const CONCURRENCY_POINTS = 150
const concurrencyHistory = new Map()

function renderConcurrency(backends) {
  const limited = backends.filter((b) => b.concurrency)
  document.getElementById('concurrency-section').hidden = limited.length === 0
  const charts = limited.map((b) => {
    const points = concurrencyHistory.get(b.name) ?? []
    points.push({ at: new Date(), limit: b.concurrency.limit, active: b.inFlight.active, waiting: b.inFlight.waiting })
    if (points.length > CONCURRENCY_POINTS) points.shift()
    concurrencyHistory.set(b.name, points)
    const W = 600, H = 120, top = 10, bottom = 20, left = 40
    const max = Math.max(1, ...points.map((p) => Math.max(p.limit, p.active)))
    const x = (i) => left + (i / (CONCURRENCY_POINTS - 1)) * (W - left)
    const y = (n) => H - bottom - (n / max) * (H - top - bottom)
    const line = (key) => points.map((p, i) => x(CONCURRENCY_POINTS - points.length + i).toFixed(1) + ',' + y(p[key]).toFixed(1)).join(' ')
    const svg = svgOf(W, H)
    svg.el.setAttribute('data-backend', b.name)
    svg.add('line', { class: 'axis', x1: left, x2: W, y1: H - bottom, y2: H - bottom })
    svg.add('text', { x: 0, y: top + 8 }, String(max))
    svg.add('text', { x: 0, y: H - bottom }, '0')
    svg.add('text', { x: left, y: H - 4 }, b.name + ': limit ' + b.concurrency.limit + ', in flight ' + b.inFlight.active + ', waiting ' + b.inFlight.waiting +
      (b.concurrency.minRttMs !== undefined ? ', unloaded latency ' + b.concurrency.minRttMs.toFixed(1) + ' ms' : '') + (b.concurrency.phase === 'measuring' ? ' (measuring it)' : ''))
    svg.add('polyline', { class: 'limit', points: line('limit') })
    svg.add('polyline', { class: 'active', points: line('active') })
    return svg.el
  })
  document.getElementById('concurrency').replaceChildren(...charts)
}

/** An empty SVG of W x H and a way to add elements to it. */
function svgOf(W, H) {
  const el = document.createElementNS(SVG, 'svg')
  el.setAttribute('viewBox', '0 0 ' + W + ' ' + H)
  /** A tag element with attrs (and text), in parent (the svg itself by default). */
  const add = (tag, attrs, text, parent = el) => {
    const e = document.createElementNS(SVG, tag)
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
    if (text !== undefined) e.textContent = text
    parent.append(e)
    return e
  }
  return { el, add }
}

/** Requests per 10 s bucket as bars, the 5xx among them in red; the oldest bucket on the left.
 *  Above it, the rates over /status's lastMinute: the same minute as the backends' and retries'. */
function renderChart(series, lastMinute) {
  const W = 600, H = 180, top = 10, bottom = 20, left = 40
  const max = Math.max(1, ...series.map((b) => b.requests))
  const step = (W - left) / series.length
  const y = (n) => H - bottom - (n / max) * (H - top - bottom)
  const { el: svg, add } = svgOf(W, H)
  add('line', { class: 'axis', x1: left, x2: W, y1: H - bottom, y2: H - bottom })
  add('text', { x: 0, y: top + 8 }, String(max))
  add('text', { x: 0, y: H - bottom }, '0')
  add('text', { x: left, y: H - 4 }, '5 min ago')
  add('text', { x: W - 24, y: H - 4 }, 'now')
  series.forEach((b, i) => {
    const x = left + i * step + 1
    const bar = add('rect', { class: 'requests', x, width: step - 2, y: y(b.requests), height: H - bottom - y(b.requests) })
    add('title', {}, time(new Date(b.start)) + ': ' + b.requests + ' requests, ' + b.errors + ' 5xx', bar)
    if (b.errors > 0) add('rect', { class: 'errors', x, width: step - 2, y: y(b.errors), height: H - bottom - y(b.errors) })
  })
  document.getElementById('chart').replaceChildren(svg)
  const minute = Object.values(lastMinute)
  const requests = minute.reduce((a, c) => a + c.requests, 0)
  const errors = minute.reduce((a, c) => a + c.errors, 0)
  document.getElementById('rates').textContent =
    'Last minute: ' + (requests / 60).toFixed(1) + ' requests/s, ' + (requests ? ((errors / requests) * 100).toFixed(1) : '0.0') + '% 5xx'
}

function renderRetries(retries, rejections) {
  const rows = []
  for (const [backend, byReason] of Object.entries(retries.byBackend)) {
    for (const [reason, n] of Object.entries(byReason)) rows.push(row([{ text: 'retry after ' + backend }, { text: reason }, { text: n, className: 'num' }]))
  }
  if (retries.budgetExhausted > 0) rows.push(row([{ text: 'not retried' }, { text: 'retry budget spent' }, { text: retries.budgetExhausted, className: 'num' }]))
  for (const [reason, n] of Object.entries(rejections.byReason)) rows.push(row([{ text: 'rejected' }, { text: reason }, { text: n, className: 'num' }]))
  if (rows.length === 0) rows.push(row([{ text: 'none', className: 'small' }, { text: '' }, { text: '' }]))
  document.getElementById('retries').replaceChildren(...rows)
  document.getElementById('retry-totals').textContent =
    'In the last minute: ' + retries.total + ' retried, ' + rejections.total + ' rejected'
}

function renderCertificate(cert) {
  const dl = document.getElementById('cert')
  if (!cert) {
    dl.replaceChildren(el('dt', '', 'TLS'), el('dd', '', 'off: the listener serves plain HTTP'))
    return
  }
  const hoursLeft = (Date.parse(cert.notAfter) - Date.now()) / 3_600_000
  const left = hoursLeft < 0 ? 'expired' : hoursLeft < 48 ? Math.floor(hoursLeft) + ' hours left' : Math.floor(hoursLeft / 24) + ' days left'
  const expires = el('dd', '', new Date(cert.notAfter).toLocaleString() + ' ')
  expires.append(el('span', 'badge ' + (hoursLeft < 72 ? 'bad' : hoursLeft < 14 * 24 ? 'warn' : 'ok'), left))
  dl.replaceChildren(el('dt', '', 'Subject'), el('dd', '', cert.subject), el('dt', '', 'Expires'), expires)
}

/** A route's match in words: methods, the path form, then headers. */
function describeMatch(m) {
  const parts = []
  if (m.methods) parts.push(m.methods.join(','))
  if (m.path !== undefined) parts.push(m.path)
  else if (m.pathPrefix !== undefined) parts.push(m.pathPrefix + '*')
  else if (m.pathRegex !== undefined) parts.push('~' + m.pathRegex)
  for (const [name, want] of Object.entries(m.headers || {})) parts.push(name + (typeof want === 'string' ? ': ' + want : ' ~ ' + want.regex))
  return parts.length ? parts.join(' ') : 'every other request'
}

/** Counts as "what n, what n" (e.g. injected faults by kind), or "" when there are none. */
function counts(byWhat) {
  return Object.entries(byWhat || {}).map(([what, n]) => what + ' ' + n).join(', ')
}

function renderRoutes(routes, mirror) {
  const rows = routes.map((r) => {
    const fault = r.fault ? [r.fault.abort && 'abort ' + r.fault.abort.status + ' ' + r.fault.abort.percent + '%', r.fault.delay && 'delay ' + r.fault.delay.ms + ' ms ' + r.fault.delay.percent + '%', r.fault.headerControl && 'header control'].filter(Boolean).join(', ') : ''
    const injected = r.fault ? counts(r.fault.injected) : ''
    const copies = r.mirror ? 'to ' + r.mirror.backend + ' ' + r.mirror.percent + '%' : ''
    const tr = row([
      { text: r.name },
      { text: describeMatch(r.match) },
      { text: r.lastMinute.requests + ' / ' + r.lastMinute.errors, className: 'num' },
      { text: fault + (injected ? ' (injected: ' + injected + ')' : '') },
      { text: copies },
    ])
    tr.dataset.route = r.name
    return tr
  })
  document.getElementById('routes').replaceChildren(...rows)
  const shadows = Object.entries(mirror || {}).map(([backend, byResult]) => backend + ': ' + counts(byResult))
  document.getElementById('mirror-totals').textContent = shadows.length ? 'Mirrored copies since start, ' + shadows.join('; ') : ''
}

function renderConfig(config, tracing) {
  const minutes = Math.floor((Date.now() - Date.parse(config.loadedAt)) / 60_000)
  const parts = [
    el('dt', '', 'Version'), el('dd', '', config.version),
    el('dt', '', 'Loaded'), el('dd', '', new Date(config.loadedAt).toLocaleString() + ' (' + minutes + ' min ago)'),
  ]
  if (config.pendingRestart.length > 0) parts.push(el('dt', '', 'Needs a restart'), el('dd', '', config.pendingRestart.join(', ')))
  parts.push(
    el('dt', '', 'Tracing'),
    el('dd', '', tracing
      ? tracing.protocol + ' to ' + tracing.endpoint + ', sampleRatio ' + tracing.sampleRatio + ': ' + tracing.exported + ' spans exported, ' + tracing.queued + ' queued, ' + tracing.dropped + ' dropped'
      : 'off'),
  )
  document.getElementById('config').replaceChildren(...parts)
}

refresh()
`

/** The page: static skeleton; the script fills every element with an id. */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sidecar-proxy status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header><h1>sidecar-proxy</h1><span id="ready" class="badge">…</span><span id="updated" class="updated">loading /status …</span></header>
<main>
<div id="banner" role="alert"></div>
<section class="wide"><h2>Backends</h2>
<table><thead><tr><th>Backend</th><th class="num">Weight</th><th>Health</th><th>Breaker</th><th class="num">In flight<br>active / waiting</th><th class="num">Connections<br>to it</th><th class="num">Last minute<br>requests / 5xx</th><th>Share, last minute</th><th class="num">Retries<br>last minute</th></tr></thead>
<tbody id="backends"></tbody></table></section>
<section><h2>Requests and 5xx per 10 s</h2><div id="rates" class="small"></div><div id="chart"></div>
<div class="legend small"><span class="requests">requests</span><span class="errors">5xx</span></div></section>
<section id="concurrency-section" hidden><h2>Concurrency limit and in flight</h2><div class="small">every 2 s since this page opened</div><div id="concurrency"></div>
<div class="legend small"><span class="limit">limit</span><span class="active">in flight</span></div></section>
<section><h2>Retries and rejections</h2><div id="retry-totals" class="small"></div>
<table><thead><tr><th>What</th><th>Reason</th><th class="num">Last minute</th></tr></thead><tbody id="retries"></tbody></table></section>
<section><h2>Readiness latches held</h2><table><tbody id="latches"></tbody></table></section>
<section><h2>Certificate</h2><dl id="cert"></dl></section>
<section class="wide"><h2>Routes, first match wins</h2><div id="mirror-totals" class="small"></div>
<table><thead><tr><th>Route</th><th>Matches</th><th class="num">Last minute<br>requests / 5xx</th><th>Fault</th><th>Mirror</th></tr></thead><tbody id="routes"></tbody></table></section>
<section class="wide"><h2>Config</h2><dl id="config"></dl></section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`

/** Headers for the page: nothing but its own script, style and same-origin fetches may run. */
export const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': [
    "default-src 'none'",
    `script-src ${sha256(SCRIPT)}`,
    `style-src ${sha256(STYLE)}`,
    "connect-src 'self'",
    'img-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; '),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
}
