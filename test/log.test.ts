import t from 'tap'
import { spawn } from 'node:child_process'
import { Writable } from 'node:stream'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { accessLog, createLogger, milliseconds, type AccessLine } from '../src/log.js'

/** A logger writing into `lines` (raw text, one entry per line). */
function logger(level: string) {
  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean))
      done()
    },
  })
  return { log: createLogger({ level }, sink), lines }
}

t.test('a line leaves out undefined fields and carries an ISO time, like every line', async (t) => {
  const { log, lines } = logger('info')
  log.info({ msg: 'request', status: 200, error: undefined })
  const line = JSON.parse(lines[0]!) as Record<string, unknown>
  t.match(line, { level: 'info', msg: 'request', status: 200, pid: process.pid })
  t.notOk('error' in line)
  t.match(line.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  t.ok(Math.abs(Date.parse(line.time as string) - Date.now()) < 5000, 'and the time is now')
})

t.test('an access line is the line pino writes for the same fields, and follows the level', async (t) => {
  const { log, lines } = logger('info')
  const write = accessLog(log)
  const line: AccessLine = {
    requestId: 'id "quoted" \\ \u2028',
    client: '10.0.0.1',
    clientKey: 'forwarded:203.0.113.9',
    method: 'GET',
    path: '/a\nb?c=\u0000',
    status: 502,
    route: 'api',
    backend: 'app',
    durationMs: 1.234,
    bytesIn: 0,
    bytesOut: 99,
    attempts: 2,
    error: 'upstream_reset',
    incomplete: true,
    tunnel: undefined,
    trace_id: '0af7651916cd43dd8448eb211c80319c',
    span_id: 'b7ad6b7169203331',
  }
  write(line)
  log.info({ msg: 'request', ...line })
  const [ours, pinos] = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
  t.ok(Math.abs(Date.parse(ours!.time as string) - Date.now()) < 5000)
  t.same({ ...ours, time: 0 }, { ...pinos, time: 0 })
  t.same(Object.keys(ours!), Object.keys(pinos!), 'in the same order')
  write({ ...line, tunnel: 'upstream_closed', span_id: undefined })
  log.info({ msg: 'request', ...line, tunnel: 'upstream_closed', span_id: undefined })
  const [ours2, pinos2] = lines.slice(2).map((l) => JSON.parse(l) as Record<string, unknown>)
  t.same({ ...ours2, time: 0 }, { ...pinos2, time: 0 }, 'with a tunnel, without a span')
  t.same(Object.keys(ours2!), Object.keys(pinos2!))
  lines.length = 2
  write({ ...line, clientKey: undefined, attempts: undefined, error: undefined, incomplete: undefined, trace_id: undefined, span_id: undefined })
  t.same(Object.keys(JSON.parse(lines[2]!) as object), ['level', 'time', 'pid', 'msg', 'requestId', 'client', 'method', 'path', 'status', 'route', 'backend', 'durationMs', 'bytesIn', 'bytesOut'], 'undefined fields left out')
  log.level = 'warn'
  write(line)
  t.equal(lines.length, 3, 'nothing below the level')
})

t.test('durations are written to the microsecond, as String() writes the rounded number', async (t) => {
  const values = [0, 0.0004, 0.0005, 0.001, 0.01, 0.1, 0.5, 1, 1.2, 1.23, 1.234, 1.2345, 12.0006, 999.9999, 1000, 59_999.999, 3_600_000.5, 1e12 + 0.25]
  for (let i = 0; i < 2000; i++) values.push(Math.random() * 10 ** ((i % 7) - 2))
  const wrong = values.filter((ms) => milliseconds(ms) !== String(Math.round(ms * 1000) / 1000))
  t.same(wrong.map((ms) => [ms, milliseconds(ms)]), [], 'every value written as String() would')
  t.equal(milliseconds(-1.5), String(Math.round(-1500) / 1000), 'a negative one (a clock gone back) too')
})

/** Node running `code` with the built log module as `log`; its stdout. */
function logging(code: string, readAfterMs = 0): Promise<{ stdout: string; code: number | null; firstLineAfterMs: number }> {
  const started = Date.now()
  const child = spawn(process.execPath, ['--input-type=module', '-e', `import * as log from ${JSON.stringify(LOG_MODULE)}\n${code}`], { stdio: ['ignore', 'pipe', 'inherit'] })
  let stdout = ''
  let firstLineAfterMs = -1
  if (readAfterMs > 0) {
    child.stdout.pause()
    setTimeout(() => child.stdout.resume(), readAfterMs)
  }
  child.stdout.setEncoding('utf8') // a character split between two reads is joined
  child.stdout.on('data', (c: string) => {
    if (firstLineAfterMs < 0) firstLineAfterMs = Date.now() - started
    stdout += c
  })
  return new Promise((resolve) => child.on('close', (code) => resolve({ stdout, code, firstLineAfterMs })))
}
const LOG_MODULE = pathToFileURL(fileURLToPath(new URL('../dist/log.js', import.meta.url))).href

t.test('standard output: every line arrives, in order, when the process exits at once after them', async (t) => {
  const { stdout, code } = await logging(`
    const logger = log.createLogger({ level: 'info' })
    for (let i = 0; i < 5000; i++) i % 2 ? logger.info({ i }, 'odd') : logger.warn({ i }, 'even')
    process.exit(3)`)
  t.equal(code, 3)
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { i: number; msg: string })
  t.equal(lines.length, 5000, 'nothing lost at exit')
  t.ok(lines.every((l, i) => l.i === i && l.msg === (i % 2 ? 'odd' : 'even')), 'in the order written')
})

t.test('standard output: lines of any size and script arrive whole, through a pipe its reader leaves full for a while', async (t) => {
  // A non-blocking pipe (net.Socket on fd 1 makes it so, as a parent's libuv may) refuses
  // writes while full: each is waited out, as a blocking write would be, and nothing is lost.
  const { stdout, code } = await logging(
    `
    import net from 'node:net'
    new net.Socket({ fd: 1, readable: false })
    const logger = log.createLogger({ level: 'info' })
    const big = 'x'.repeat(200_000)
    for (let i = 0; i < 3000; i++) logger.info({ i, text: i % 1000 === 7 ? big : 'h\u00e9llo \u65e5\u672c \ud83d\ude80' })
    process.exit(0)`,
    500,
  )
  t.equal(code, 0)
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { i: number; text: string })
  t.equal(lines.length, 3000, 'every line')
  t.ok(lines.every((l, i) => l.i === i), 'in order')
  t.ok(lines.every((l, i) => l.text === (i % 1000 === 7 ? 'x'.repeat(200_000) : 'h\u00e9llo \u65e5\u672c \ud83d\ude80')), 'each whole: lines of 200 KB, and of UTF-8 beyond ASCII')
})

t.test('standard output: a reader gone (EPIPE) loses the lines, not the process', async (t) => {
  const child = spawn(process.execPath, ['--input-type=module', '-e', `import * as log from ${JSON.stringify(LOG_MODULE)}
    const logger = log.createLogger({ level: 'info' })
    setTimeout(() => {
      for (let i = 0; i < 2000; i++) logger.info({ i }, 'to no one')
      setTimeout(() => process.exit(7), 300) // past a flush interval
    }, 100)`], { stdio: ['ignore', 'pipe', 'inherit'] })
  child.stdout.destroy() // the read end closed before a line is written
  const code = await new Promise((resolve) => child.on('close', resolve))
  t.equal(code, 7, 'it went on to exit as it meant to')
})

t.test('standard output: a lone line is written within the flush interval, not held until a batch gathers', async (t) => {
  const { stdout, firstLineAfterMs } = await logging(`
    const logger = log.createLogger({ level: 'info' })
    logger.warn('alone')
    setTimeout(() => process.exit(0), 3000)`)
  t.match(JSON.parse(stdout.trim().split('\n')[0]!), { level: 'warn', msg: 'alone' })
  t.ok(firstLineAfterMs < 2500, `arrived after ${firstLineAfterMs} ms, before the exit at 3 s`)
})
