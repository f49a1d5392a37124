// The alerts of k8s/alerts: promtool accepts the rule file and passes its unit tests, every alert
// has a test that sees it fire and one that sees it hold back, the PrometheusRule (as kustomize
// renders it) carries the same groups, every metric the rules and their tests name is one the
// proxy exports, and the dashboard lists every alert. Needs promtool (Debian's prometheus
// package; .ci/run installs it): without it the promtool tests fail under CI and are skipped
// elsewhere, saying why.
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { createMetrics } from '../../src/metrics.js'

const run = promisify(execFile)
const root = new URL('../../', import.meta.url).pathname
const dir = `${root}k8s/alerts/`
const RULES = 'sidecar-proxy.rules.yaml'
const TESTS = 'sidecar-proxy.rules.test.yaml'

interface Rule {
  alert?: string
  record?: string
  expr: string
  for?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
}
interface Group {
  name: string
  rules: Rule[]
}
interface RuleTest {
  eval_time: string
  alertname: string
  exp_alerts?: Array<{ exp_labels?: Record<string, string>; exp_annotations?: Record<string, string> }>
}
interface UnitTests {
  rule_files: string[]
  tests: Array<{ name?: string; input_series: Array<{ series: string }>; alert_rule_test?: RuleTest[] }>
}

const groups = (parse(readFileSync(`${dir}${RULES}`, 'utf8')) as { groups: Group[] }).groups
const alerts = groups.flatMap((g) => g.rules).filter((r): r is Rule & { alert: string } => r.alert !== undefined)
const unitTests = parse(readFileSync(`${dir}${TESTS}`, 'utf8')) as UnitTests

// promtool: its version line, or why the tests that need it cannot run.
const promtool = await run('promtool', ['--version']).then(
  ({ stdout, stderr }) => (stdout || stderr).split('\n')[0],
  () => undefined,
)
const missing = promtool ? undefined : 'promtool is not on PATH: apt-get install prometheus (Debian\'s package has it; .ci/run installs it) or put a Prometheus release\'s promtool on PATH'

if (missing && process.env.CI) t.fail(`${missing}; CI must check the alert rules with promtool`)
else {
  t.test(`promtool accepts the rules and passes their unit tests (${promtool ?? 'promtool not installed'})`, { skip: missing ?? false }, async (t) => {
    const check = await run('promtool', ['check', 'rules', RULES], { cwd: dir }).catch((e: { stdout?: string; stderr?: string }) => e)
    t.match(`${check.stdout}${check.stderr}`, `SUCCESS: ${groups.flatMap((g) => g.rules).length} rules found`, `promtool check rules ${RULES}`)
    // promtool exits 1 when a test fails and prints what it expected and what it got.
    const test = await run('promtool', ['test', 'rules', TESTS], { cwd: dir }).then(
      (r) => ({ ok: true, output: `${r.stdout}${r.stderr}` }),
      (e: { stdout?: string; stderr?: string }) => ({ ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
    )
    t.ok(test.ok && /\bSUCCESS\b/.test(test.output), `promtool test rules ${TESTS}`, { output: test.output })
  })
}

t.test('every alert is tested firing and holding back, and says what it is', async (t) => {
  t.same(unitTests.rule_files, [RULES], `${TESTS} tests ${RULES}`)
  const ruleTests = unitTests.tests.flatMap((u) => u.alert_rule_test ?? [])
  const names = new Set(alerts.map((a) => a.alert))
  t.equal(names.size, alerts.length, 'one rule per alert name')
  for (const test of ruleTests) t.ok(names.has(test.alertname), `the tests' ${test.alertname} at ${test.eval_time} is an alert of ${RULES}`)
  for (const alert of alerts) {
    const name = alert.alert
    const mine = ruleTests.filter((r) => r.alertname === name)
    t.ok(mine.some((r) => (r.exp_alerts ?? []).length > 0), `${name}: a test expects it to fire`)
    t.ok(mine.some((r) => (r.exp_alerts ?? []).length === 0), `${name}: a test expects it not to fire`)
    t.ok(['warning', 'critical'].includes(alert.labels?.severity ?? ''), `${name}: severity warning or critical (${alert.labels?.severity})`)
    t.match(alert.for, /^\d+[mh]$/, `${name}: a for: of minutes or hours`)
    t.match(alert.annotations?.summary, /\$labels\.\w+/, `${name}: a summary naming where ($labels)`)
    t.ok((alert.annotations?.description ?? '').length > 80, `${name}: a description saying why and what to do`)
  }
})

t.test('the PrometheusRule that kubectl apply -k k8s/alerts makes carries the same groups', async (t) => {
  const { stdout } = await run('kubectl', ['kustomize', dir])
  const objects = parseAllDocuments(stdout).map((d) => d.toJS() as { apiVersion: string; kind: string; metadata: { name: string }; spec: { groups: Group[] } })
  t.same(objects.map((o) => [o.apiVersion, o.kind, o.metadata.name]), [['monitoring.coreos.com/v1', 'PrometheusRule', 'sidecar-proxy']], 'one PrometheusRule')
  t.same(objects[0]?.spec.groups, groups, `spec.groups is ${RULES}'s groups: copy them over after an edit`)
})

t.test('the rules, their descriptions and their tests name only metrics the proxy exports', async (t) => {
  const defined = new Set((await createMetrics().registry.getMetricsAsJSON()).map((m) => m.name))
  const names = (text: string) => [...text.matchAll(/\b(?:sidecar|process|nodejs)_[a-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ''))
  const used = new Set(alerts.flatMap((a) => names(a.expr)))
  t.ok(used.size >= 10, `the rules read ${used.size} metrics`)
  for (const name of used) t.ok(defined.has(name), `${name}, read by the rules, is exported`)
  for (const name of new Set(alerts.flatMap((a) => Object.values(a.annotations ?? {}).flatMap(names)))) t.ok(defined.has(name), `${name}, named in a description, is exported`)
  for (const name of new Set(unitTests.tests.flatMap((u) => u.input_series.flatMap((s) => names(s.series))))) t.ok(defined.has(name), `${name}, fed to the unit tests, is exported`)
})

t.test('the dashboard lists every alert and links to them', async (t) => {
  const dashboard = JSON.parse(readFileSync(`${root}k8s/dashboards/sidecar-proxy.json`, 'utf8')) as { links?: Array<{ title: string; url: string }>; panels: Array<{ type: string; title: string; options?: { content?: string } }> }
  const panel = dashboard.panels.find((p) => p.type === 'text' && /alerts/i.test(p.title))
  t.ok(panel, 'a text panel about the alerts')
  for (const alert of alerts) t.match(panel?.options?.content, alert.alert, `it names ${alert.alert}`)
  t.ok(dashboard.links?.some((l) => /alert/i.test(l.title) && l.url.length > 0), 'a dashboard link to the alerts')
})
