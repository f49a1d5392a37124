// The bench results as a Markdown table (for the README) and an SVG chart (to look at).

/**
 * The generator's own jitter at the fixed rate, from direct's rounds: how far its p99 sits above
 * its p50, or how far the p99 moves between rounds, whichever is more (ms).
 */
export function generatorJitterMs(directRuns) {
  const p99s = directRuns.map((r) => r.fixedP99)
  const p50s = directRuns.map((r) => r.fixedP50)
  const mid = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  return Math.max(mid(p99s) - mid(p50s), Math.max(...p99s) - Math.min(...p99s))
}

/** The p99 a target adds over direct, when it exceeds the generator's jitter; within it, what
 *  was measured cannot tell the proxy from the generator: said so, never a number (a negative
 *  or a small one would read as "met"). */
export function addedP99(addedMs, jitterMs) {
  return Number.isFinite(addedMs) && addedMs > jitterMs ? addedMs : `not resolvable on this machine (generator jitter ${jitterMs} ms)`
}

/** The ratios the targets are stated in (docs/benchmarks.md), each with its verdict (null:
 *  a reference, or not measured). */
export function ratios(ts, many, soak) {
  const get = (n) => ts.find((t) => t.name === n)
  const out = []
  const add = (what, value, target, pass, digits = 2) => out.push({ what, value, target, digits, pass: value === null || value === undefined || Number.isNaN(value) ? null : pass })
  const [sc, bare, hp, tls, ngTls, full] = ['sidecar', 'bare-undici', 'http-proxy', 'sidecar-tls', 'nginx-tls', 'sidecar-full'].map(get)
  const cpu = sc.fixedRate.cpuUsPerRequest / bare.fixedRate.cpuUsPerRequest
  add('sidecar CPU per request / bare undici forwarder (fixed rate)', cpu, '<= 1.2', cpu <= 1.2)
  add('sidecar CPU per request / the app\'s (fixed rate)', sc.fixedRate.cpuUsPerRequest / sc.fixedRate.upstreamUsPerRequest, 'reference', null)
  add('sidecar throughput / bare undici forwarder (saturation)', sc.rps / bare.rps, '>= 0.9', sc.rps / bare.rps >= 0.9)
  add('sidecar throughput / node http-proxy (saturation)', sc.rps / hp.rps, '>= 1.8', sc.rps / hp.rps >= 1.8)
  add('bare undici throughput / node http-proxy (reference)', bare.rps / hp.rps, 'reference', null)
  const added = sc.fixedRate.addedP99Ms
  out.push(typeof added === 'string' ? { what: 'sidecar added p99 over direct at the fixed rate (ms)', value: null, target: '<= 1', pass: null, note: added } : { what: 'sidecar added p99 over direct at the fixed rate (ms)', value: added, target: '<= 1', pass: added <= 1 })
  add('sidecar-full CPU per request / sidecar', full.fixedRate.cpuUsPerRequest / sc.fixedRate.cpuUsPerRequest, 'reference', null)
  const routes = get('sidecar-routes')
  const routeCost = routes ? routes.fixedRate.cpuUsPerRequest / sc.fixedRate.cpuUsPerRequest : null
  add('sidecar with 20 routes (the last one matching) CPU per request / sidecar', routeCost, '<= 1.03', routeCost !== null && routeCost <= 1.03)
  for (const traced of ['sidecar-mirror', 'sidecar-trace-0.01', 'sidecar-trace-1'].map(get).filter(Boolean)) {
    add(`${traced.name} CPU per request / sidecar`, traced.fixedRate.cpuUsPerRequest / sc.fixedRate.cpuUsPerRequest, 'reference', null)
  }
  add('sidecar TLS keep-alive throughput / nginx TLS', ngTls ? tls.rps / ngTls.rps : null, '>= 0.4', ngTls && tls.rps / ngTls.rps >= 0.4)
  add('sidecar HTTP/2 throughput / nginx HTTP/2 (h2load)', ngTls?.h2Rps ? tls.h2Rps / ngTls.h2Rps : null, 'reference', null)
  // Idle is judged 30 s after start, once start-up's memory has been handed back (run.mjs); the
  // 2-s reading, what start-up holds, is shown. Results older than the 30-s reading are judged at 2 s.
  const settled = sc.settledRssMiB != null && bare.settledRssMiB != null
  add('sidecar idle RSS / bare undici forwarder, 2 s after start', sc.idleRssMiB / bare.idleRssMiB, settled ? 'reference' : '<= 1.1', settled ? null : sc.idleRssMiB / bare.idleRssMiB <= 1.1)
  if (settled) add('sidecar idle RSS / bare undici forwarder, 30 s after start', sc.settledRssMiB / bare.settledRssMiB, '<= 1.1', sc.settledRssMiB / bare.settledRssMiB <= 1.1)
  add('sidecar RSS with 1,000 busy connections / bare undici forwarder', many.sidecar.rssMiB / many['bare-undici'].rssMiB, '<= 1.1', many.sidecar.rssMiB / many['bare-undici'].rssMiB <= 1.1)
  add('sidecar RSS with 1,000 busy connections (MiB)', many.sidecar.rssMiB, 'reference', null)
  add('bare undici forwarder RSS with 1,000 busy connections (MiB)', many['bare-undici'].rssMiB, 'reference', null)
  if (many.sidecar.upstreamConnections !== undefined) add('connections to the app the sidecar held after them (the forwarder\'s pool stops at 128)', many.sidecar.upstreamConnections, 'reference', null, 0)
  if (soak) add('sidecar RSS over the soak: last minute / first minute', soak.rssLastMinuteMiB / soak.rssFirstMinuteMiB, '<= 1.1 (flat)', soak.rssLastMinuteMiB / soak.rssFirstMinuteMiB <= 1.1)
  return out
}

/** WebSocket and gRPC (bench/protocols.mjs) as a table: direct, through the sidecar, through the floor. */
export function renderProtocols(p) {
  const f = (x, d = 0) => (x === undefined || x === null ? '-' : x.toFixed(d))
  const line = (what, r) => `| ${what} | ${f(r.direct)} | ${f(r.sidecar)} | ${f(r.floor)} | ${f(r.ratio, 2)} | ${f(r.cpuUs ?? r.cpuUsPerMessage ?? r.cpuUsPerCall)} | ${f(r.floorCpuUs)} | ${f(r.cpuRatio, 2)} |`
  return [
    `WebSocket echo and gRPC unary, ${p.clients} clients each waiting for its answer, ${p.seconds} s each (64-byte messages):`,
    '',
    '| traffic | direct /s | through the sidecar /s | through the Node floor /s | sidecar / direct | sidecar CPU us per message or call | floor CPU us | sidecar CPU / floor |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    line('WebSocket messages (ws, plain)', p.websocket),
    line('gRPC unary calls (grpc-js, h2c both sides)', p.grpcUnary),
    '',
  ].join('\n')
}

/** The TLS rows (bench/tls.mjs) as a table, each proxy against the Node TLS floor. */
export function renderTls(r) {
  const f = (x, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d))
  const floor = r.targets.find((t) => t.name === 'floor')
  const cell = (t, row) => (t[row] == null ? '-' : `${f(t[row])}${t.name === 'floor' ? '' : ` (${f(t[row] / floor[row], 2)}x)`}`)
  return [
    `TLS (RSA-2048), CPU of the proxy process at ${r.rate} req/s (h2: 10 connections x 10 streams; h1: 50 keep-alive connections) and per connection at ${r.handshakesPerSecond} handshakes/s; medians of ${r.rounds} round(s) of ${r.seconds} s; app: ${r.app}${r.pinned ? '; each proxy pinned to one core' : ''}:`,
    '',
    '| proxy | h2 us/req | h1 keep-alive us/req | new TLS connection us | resumed us | idle TLS connection KiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...r.targets.map((t) => `| ${t.name === 'floor' ? 'Node floor (http2 compat + undici)' : t.name} | ${cell(t, 'h2')} | ${cell(t, 'h1')} | ${cell(t, 'new')} | ${cell(t, 'resumed')} | ${f(t.idleKiBPerConnection, 1)} |`),
    '',
  ].join('\n')
}

/** The ratios of the path users run (bench/tls.mjs, bench/protocols.mjs): each against its Node
 *  floor, and against Caddy where it ran. */
export function tlsRatios(tls, protocols) {
  const out = []
  const add = (what, value, target, pass) => out.push({ what, value: Number.isFinite(value) ? value : null, target, digits: 2, pass: Number.isFinite(value) ? pass(value) : null })
  if (tls) {
    const [sc, floor, caddy] = ['sidecar', 'floor', 'caddy'].map((n) => tls.targets.find((t) => t.name === n))
    for (const [row, label] of [['h2', 'HTTP/2'], ['h1', 'HTTP/1.1 keep-alive']]) {
      add(`TLS ${label}: sidecar CPU per request / Node TLS floor`, sc[row] / floor[row], '<= 1.15', (v) => v <= 1.15)
      if (caddy) add(`TLS ${label}: sidecar CPU per request / Caddy`, sc[row] / caddy[row], '< 1', (v) => v < 1)
    }
    add('new TLS connection: sidecar CPU / Node TLS floor', sc.new / floor.new, '<= 1.1', (v) => v <= 1.1)
    add('resumed TLS connection: sidecar CPU / Node TLS floor', sc.resumed / floor.resumed, '<= 1.1', (v) => v <= 1.1)
    add('idle TLS connection: sidecar memory / Node TLS floor', sc.idleKiBPerConnection / floor.idleKiBPerConnection, '<= 1', (v) => v <= 1)
  }
  if (protocols?.websocket.cpuRatio !== undefined) {
    add('WebSocket: sidecar CPU per message / Node floor', protocols.websocket.cpuRatio, '<= 1.3', (v) => v <= 1.3)
    add('gRPC unary: sidecar CPU per call / Node floor', protocols.grpcUnary.cpuRatio, '<= 1.3', (v) => v <= 1.3)
  }
  return out
}

const fmt = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits))

export function renderMarkdown(r) {
  const m = r.machine
  const gen = r.plan.generator ?? 'autocannon'
  const num = (x, digits) => (typeof x === 'string' ? x : fmt(x, digits))
  const lines = [
    `Run ${r.date.slice(0, 16).replace('T', ' ')} UTC on ${m.cores} x ${m.cpu}, ${m.memoryGiB} GiB, Node ${m.node}, Linux ${m.kernel}.`,
    '',
    ...(r.tls ? [renderTls(r.tls)] : []),
    `Plain HTTP: ${r.plan.rounds} round(s), medians; saturation: ${r.plan.connections} connections for ${r.plan.saturateS} s by ${gen}${gen === 'wrk' ? ' (autocannon beside it)' : ''}${r.plan.h2load ? ', HTTP/2 by h2load (16 connections x 10 streams)' : ''}; fixed rate: ${r.plan.fixedRate} req/s for ${r.plan.fixedS} s by autocannon (sidecar-tls-new: 16 clients, a new TLS connection per request, fixed rate ${r.targets.find((t) => t.name === 'sidecar-tls-new')?.fixedRate.rate} req/s).`,
    '',
    `| target | req/s (${gen}) | req/s (autocannon) | HTTP/2 req/s (h2load) | p50 ms | p99 ms | max ms | errors | CPU us/req at fixed rate | the app's CPU us/req | p99 ms at fixed rate | added p99 ms | idle RSS MiB (2 s; 30 s) | peak RSS MiB |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...r.targets.map(
      (t) =>
        `| ${t.name} | ${fmt(t.rps)} | ${fmt(t.autocannonRps)} | ${fmt(t.h2Rps)} | ${fmt(t.latencyMs.p50, 1)} | ${fmt(t.latencyMs.p99, 1)} | ${fmt(t.latencyMs.max)} | ${t.errors} | ${fmt(t.fixedRate.cpuUsPerRequest)} | ${fmt(t.fixedRate.upstreamUsPerRequest)} | ${fmt(t.fixedRate.p99Ms)} | ${typeof t.fixedRate.addedP99Ms === 'string' ? 'not resolvable' : fmt(t.fixedRate.addedP99Ms)} | ${fmt(t.idleRssMiB, 1)}${t.settledRssMiB == null ? '' : `; ${fmt(t.settledRssMiB, 1)}`} | ${fmt(t.peakRssMiB, 1)} |`,
    ),
    '',
    '| ratio | value | target | verdict |',
    '| --- | ---: | --- | --- |',
    ...r.ratios.map((x) => `| ${x.what} | ${x.value === null ? (x.note ?? 'not measured') : num(x.value, x.digits ?? 2)} | ${x.target} | ${x.pass === null ? '' : x.pass ? 'met' : '**missed**'} |`),
    '',
  ]
  if (r.protocols) lines.push(renderProtocols(r.protocols))
  if (r.soak) {
    lines.push(
      `Soak: ${r.soak.minutes} min at ${r.plan.fixedRate} req/s over 1,000 connections, ${r.soak.requests} requests, ${r.soak.errors} errors; sidecar RSS ${fmt(r.soak.rssFirstMinuteMiB, 1)} MiB in the first minute after warm-up, ${fmt(r.soak.rssLastMinuteMiB, 1)} MiB in the last.`,
      '',
    )
  }
  return lines.join('\n')
}

/** Two bar charts side by side: saturated throughput, and CPU per request at the fixed rate. */
export function renderSvg(r) {
  const rowH = 26
  const top = 50
  const width = 900
  const height = top + r.targets.length * rowH + 40
  const chart = (x0, title, key, unit) => {
    const values = r.targets.map((t) => key(t) ?? 0)
    const max = Math.max(...values, 1)
    const barMax = 260
    const bars = r.targets.map((t, i) => {
      const v = key(t)
      const y = top + i * rowH
      const w = v ? (v / max) * barMax : 0
      const colour = t.name.startsWith('sidecar') ? '#2b6cb0' : '#a0aec0'
      return `<text x="${x0 + 120}" y="${y + 16}" text-anchor="end">${t.name}</text>
<rect x="${x0 + 128}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${colour}"/>
<text x="${x0 + 134 + w}" y="${y + 16}">${v === null || v === undefined ? 'n/a' : Math.round(v).toLocaleString('en-US')}</text>`
    })
    return `<text x="${x0 + 10}" y="30" font-weight="bold">${title} (${unit})</text>\n${bars.join('\n')}`
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
${chart(0, 'Throughput at saturation', (t) => t.rps, 'req/s, higher is better')}
${chart(450, `CPU per request at ${r.plan.fixedRate} req/s`, (t) => t.fixedRate.cpuUsPerRequest, 'us, lower is better')}
<text x="10" y="${height - 12}" fill="#555">${r.date.slice(0, 10)}, ${r.machine.cores} x ${r.machine.cpu}, Node ${r.machine.node}; medians of ${r.plan.rounds} round(s). Blue: sidecar-proxy.</text>
</svg>
`
}
