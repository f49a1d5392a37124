// The OpenMetrics text a scraper asking for it gets (GET /metrics with Accept:
// application/openmetrics-text), made from the registry's Prometheus text, with the latency
// histograms' exemplars (metrics.ts keeps them). Text work only: prom-client stays in metrics.ts.

/** A label value as the text formats write it. */
export const escapeLabel = (value: string) => value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')

/**
 * The registry's Prometheus text as OpenMetrics 1.0 (prom-client's own OpenMetrics mode renames
 * the counters it formats, for good: one registry cannot serve both). A counter's family drops
 * its `_total` (its samples keep it), help texts escape their quotes, families are not separated
 * by blank lines, `# EOF` ends it; each exemplar joins its bucket line.
 */
export function toOpenMetrics(text: string, exemplars: ReadonlyMap<string, string>): string {
  const out: string[] = []
  for (const family of text.split('\n\n')) {
    const lines = family.split('\n').filter((line) => line !== '')
    const [, name = '', type] = /^# TYPE (\S+) (\S+)$/m.exec(family) ?? []
    const total = type === 'counter' && name.endsWith('_total')
    for (const line of lines) {
      if (line.startsWith('# HELP ')) {
        const help = line.slice(`# HELP ${name} `.length).replace(/"/g, '\\"')
        out.push(`# HELP ${total ? name.slice(0, -6) : name} ${help}`)
      } else if (line.startsWith('# TYPE ')) {
        out.push(`# TYPE ${total ? name.slice(0, -6) : name} ${type}`)
      } else {
        const exemplar = exemplars.get(line.slice(0, line.lastIndexOf(' ')))
        out.push(exemplar === undefined ? line : `${line} # ${exemplar}`)
      }
    }
  }
  return `${out.join('\n')}\n# EOF\n`
}
