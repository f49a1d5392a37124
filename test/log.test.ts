import t from 'tap'
import { spawn } from 'node:child_process'
import { Writable } from 'node:stream'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { createLogger, infoLine } from '../src/log.js'

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

t.test("infoLine writes the very line pino's info would, time aside", async (t) => {
  const { log, lines } = logger('info')
  const fields = { msg: 'request', path: '/a"b\\c\n\u2028é', status: 200, durationMs: 1.25, incomplete: true, error: undefined, backend: 'app' }
  log.info(fields)
  infoLine(log, fields)
  t.equal(lines.length, 2)
  const untimed = (line: string) => line.replace(/"time":"[^"]+"/, '"time":"T"')
  t.equal(untimed(lines[1]!), untimed(lines[0]!), 'same keys, same order, same escaping, undefined left out')
  t.match(JSON.parse(lines[1]!).time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
})

t.test('infoLine keeps to the level, including one changed at run time', async (t) => {
  const { log, lines } = logger('warn')
  infoLine(log, { msg: 'request' })
  t.equal(lines.length, 0, 'nothing at warn')
  log.level = 'debug'
  infoLine(log, { msg: 'request' })
  t.equal(lines.length, 1, 'written once the level allows it')
})

/** Node running `code` with the built log module as `log`; its stdout. */
function logging(code: string): Promise<{ stdout: string; code: number | null; firstLineAfterMs: number }> {
  const started = Date.now()
  const child = spawn(process.execPath, ['--input-type=module', '-e', `import * as log from ${JSON.stringify(LOG_MODULE)}\n${code}`], { stdio: ['ignore', 'pipe', 'inherit'] })
  let stdout = ''
  let firstLineAfterMs = -1
  child.stdout.on('data', (c: Buffer) => {
    if (firstLineAfterMs < 0) firstLineAfterMs = Date.now() - started
    stdout += String(c)
  })
  return new Promise((resolve) => child.on('close', (code) => resolve({ stdout, code, firstLineAfterMs })))
}
const LOG_MODULE = pathToFileURL(fileURLToPath(new URL('../dist/log.js', import.meta.url))).href

t.test('standard output: every line arrives, in order, when the process exits at once after them', async (t) => {
  const { stdout, code } = await logging(`
    const logger = log.createLogger({ level: 'info' })
    for (let i = 0; i < 5000; i++) i % 2 ? logger.info({ i }, 'pino line') : log.infoLine(logger, { msg: 'fast line', i })
    process.exit(3)`)
  t.equal(code, 3)
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { i: number; msg: string })
  t.equal(lines.length, 5000, 'nothing lost at exit')
  t.ok(lines.every((l, i) => l.i === i && l.msg === (i % 2 ? 'pino line' : 'fast line')), 'in the order written, both kinds interleaved')
})

t.test('standard output: a lone line is written within the flush interval, not held until 4 KiB gather', async (t) => {
  const { stdout, firstLineAfterMs } = await logging(`
    const logger = log.createLogger({ level: 'info' })
    logger.warn('alone')
    setTimeout(() => process.exit(0), 3000)`)
  t.match(JSON.parse(stdout.trim().split('\n')[0]!), { level: 'warn', msg: 'alone' })
  t.ok(firstLineAfterMs < 2500, `arrived after ${firstLineAfterMs} ms, before the exit at 3 s`)
})
