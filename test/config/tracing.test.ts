// The tracing key: off unless present, its defaults, its checks with paths, and the OTEL_*
// environment variables filling in what it leaves unset.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig, otelHeaders, validateConfig, withOtelEnv } from '../../src/config/load.js'
import { isConfigError } from '../../src/errors.js'
import { effectiveConfig } from '../../src/config/reload.js'
import { problems } from '../fixtures/config.js'


t.test('off by default; `tracing: {}` turns it on with every default visible', async (t) => {
  t.equal(validateConfig({}).tracing, undefined)
  t.same(validateConfig({ tracing: {} }).tracing, {
    otlp: { endpoint: 'http://localhost:4318/v1/traces', protocol: 'http/protobuf', headers: {}, timeoutMs: 10_000 },
    sampleRatio: 0.01,
    serviceName: 'sidecar-proxy',
    batch: { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMs: 5000 },
  })
})

t.test('an endpoint with no path gets /v1/traces; one with a path is taken as it is', async (t) => {
  t.equal(validateConfig({ tracing: { otlp: { endpoint: 'http://collector:4318' } } }).tracing!.otlp.endpoint, 'http://collector:4318/v1/traces')
  t.equal(validateConfig({ tracing: { otlp: { endpoint: 'https://collector/otlp/v1/traces' } } }).tracing!.otlp.endpoint, 'https://collector/otlp/v1/traces')
})

t.test('every problem with its path', async (t) => {
  t.same(
    problems({
      tracing: {
        otlp: { endpoint: 'grpc://collector:4317', protocol: 'grpc', headers: { 'bad header': 'x' }, timeoutMs: 0 },
        sampleRatio: 2,
        serviceName: '',
        batch: { maxQueueSize: 10, maxExportBatchSize: 20 },
        sampler: 'always',
      },
    }).sort(),
    [
      'tracing.otlp.endpoint: must be an http:// or https:// URL, e.g. http://otel-collector.observability:4318/v1/traces',
      'tracing.otlp.protocol: Invalid option: expected one of "http/protobuf"|"http/json"',
      'tracing.otlp.headers.bad header: must be a header name',
      'tracing.otlp.timeoutMs: Too small: expected number to be >=1',
      'tracing.sampleRatio: must be between 0 and 1 (a share: 0.01 samples 1 request in 100)',
      'tracing.serviceName: Too small: expected string to have >=1 characters',
      'tracing.batch.maxExportBatchSize: must not exceed tracing.batch.maxQueueSize',
      'tracing.sampler: unknown key',
    ].sort(),
  )
})

t.test('OTEL_* environment variables fill in what the file leaves unset, and do not turn tracing on', async (t) => {
  const env = {
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/',
    OTEL_SERVICE_NAME: 'shop',
    OTEL_EXPORTER_OTLP_HEADERS: 'api-key=s%3Dcret, x-team = payments,broken',
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_EXPORTER_OTLP_TIMEOUT: '3000',
  }
  t.same(withOtelEnv({}, env), {}, 'no tracing key: the environment turns nothing on')
  t.same(validateConfig(withOtelEnv({ tracing: {} }, env)).tracing!.otlp, {
    endpoint: 'http://collector:4318/v1/traces',
    protocol: 'http/json',
    headers: { 'api-key': 's=cret', 'x-team': 'payments' },
    timeoutMs: 3000,
  })
  t.equal(validateConfig(withOtelEnv({ tracing: {} }, env)).tracing!.serviceName, 'shop')
  const traces = { ...env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://traces:4318/custom' }
  t.equal(validateConfig(withOtelEnv({ tracing: {} }, traces)).tracing!.otlp.endpoint, 'http://traces:4318/custom', 'the traces endpoint, as it is')
  const file = { tracing: { serviceName: 'mine', otlp: { endpoint: 'http://file:4318/v1/traces', headers: { 'api-key': 'file' } } } }
  const merged = validateConfig(withOtelEnv(file, env)).tracing!
  t.equal(merged.serviceName, 'mine', "the file's value wins")
  t.equal(merged.otlp.endpoint, 'http://file:4318/v1/traces')
  t.same(merged.otlp.headers, { 'api-key': 'file', 'x-team': 'payments' }, 'headers merged, the file winning per name')
  t.same(problems(withOtelEnv({ tracing: {} }, { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })), ['tracing.otlp.protocol: Invalid option: expected one of "http/protobuf"|"http/json"'], 'a bad variable is reported at the key it fills')
})

t.test('otelHeaders: key=value pairs, percent-decoded, bad pairs skipped', async (t) => {
  t.same(otelHeaders(undefined), {})
  t.same(otelHeaders('a=1,=2,b,c=%E0%A4%A'), { a: '1', c: '%E0%A4%A' })
})

t.test('loadConfig applies the environment; tracing is restart-only on reload', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tracing-config-'))
  const file = join(dir, 'config.json')
  writeFileSync(file, JSON.stringify({ tracing: { sampleRatio: 0.5 } }))
  const config = await loadConfig(file, {}, { OTEL_SERVICE_NAME: 'from-env' })
  t.equal(config.tracing!.serviceName, 'from-env')
  const off = validateConfig({})
  t.same(effectiveConfig(off, config), { config: off, pendingRestart: ['tracing'] }, 'turning it on waits for a restart')
  t.same(effectiveConfig(config, off).pendingRestart, ['tracing'])
  t.equal(effectiveConfig(config, off).config.tracing!.sampleRatio, 0.5, 'the running tracing stays')
})

t.test('validate says what tracing will do, and names a bad key by its path', async (t) => {
  const { validateCommand } = await import('../../src/cli/validate.js')
  const dir = t.testdir({
    'good.yaml': 'listener:\n  tls: false\ntracing:\n  otlp:\n    endpoint: http://collector:4318\n  sampleRatio: 0.1\n',
    'bad.yaml': 'listener:\n  tls: false\ntracing:\n  otlp:\n    endpoint: collector:4318\n',
  })
  const out: string[] = []
  const sink = { out: (l: string) => out.push(l), err: (l: string) => out.push(l) }
  t.equal(await validateCommand(['--config', `${dir}/good.yaml`], sink), 0)
  t.match(out.join('\n'), /\n {2}tracing: http\/(protobuf|json) to http:\/\/collector:4318\/v1\/traces, sampleRatio 0\.1, service /)
  const err = await validateCommand(['--config', `${dir}/bad.yaml`], sink).catch((e: unknown) => e)
  t.ok(isConfigError(err))
  t.same((err as { problems: string[] }).problems, ['tracing.otlp.endpoint: must be an http:// or https:// URL, e.g. http://otel-collector.observability:4318/v1/traces'])
})

t.test("the Kubernetes example's commented tracing section is valid once uncommented", async (t) => {
  const { readFileSync } = await import('node:fs')
  const { parse } = await import('yaml')
  const text = readFileSync(new URL('../../k8s/base/sidecar.yaml', import.meta.url), 'utf8')
  const block = text.slice(text.indexOf('# tracing:')).split('\n').map((l) => l.replace(/^# ?/, '')).join('\n')
  const config = validateConfig(parse(block))
  t.match(config.tracing, { otlp: { endpoint: /^http:\/\/otel-collector\..*:4318\/v1\/traces$/ } })
})
