import t from 'tap'
import { Writable } from 'node:stream'
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
