// The bench results as a Markdown table (for the README) and an SVG chart (to look at).
import { renderProtocols } from './protocols.mjs'

const fmt = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits))

export function renderMarkdown(r) {
  const m = r.machine
  const lines = [
    `Run ${r.date.slice(0, 16).replace('T', ' ')} UTC on ${m.cores} x ${m.cpu}, ${m.memoryGiB} GiB, Node ${m.node}, Linux ${m.kernel}.`,
    `${r.plan.rounds} round(s), medians; saturation: ${r.plan.connections} connections for ${r.plan.saturateS} s; fixed rate: ${r.plan.fixedRate} req/s for ${r.plan.fixedS} s (sidecar-tls-new: 16 clients, a new TLS connection per request, fixed rate ${r.targets.find((t) => t.name === 'sidecar-tls-new')?.fixedRate.rate} req/s).`,
    '',
    '| target | req/s (saturated) | p50 ms | p90 ms | p99 ms | max ms | errors | CPU us/req at fixed rate | p99 ms at fixed rate | added p99 ms | peak RSS MiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...r.targets.map(
      (t) =>
        `| ${t.name} | ${fmt(t.rps)} | ${fmt(t.latencyMs.p50)} | ${fmt(t.latencyMs.p90)} | ${fmt(t.latencyMs.p99)} | ${fmt(t.latencyMs.max)} | ${t.errors} | ${fmt(t.fixedRate.cpuUsPerRequest)} | ${fmt(t.fixedRate.p99Ms)} | ${fmt(t.fixedRate.addedP99Ms)} | ${fmt(t.peakRssMiB, 1)} |`,
    ),
    '',
    '| ratio | value | target | verdict |',
    '| --- | ---: | --- | --- |',
    ...r.ratios.map((x) => `| ${x.what} | ${fmt(x.value, 2)} | ${x.target} | ${x.pass === null ? (x.value === null ? 'not measured (nginx absent)' : '') : x.pass ? 'met' : '**missed**'} |`),
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
