// The pino logger: JSON lines on stdout, ISO timestamps. The only module that imports pino.
import { writeSync } from 'node:fs'
import { pino, type DestinationStream, type Logger } from 'pino'

export type { Logger }

export interface LogOptions {
  level: string
}

/**
 * Lines are gathered and written when 32 KiB have gathered or every FLUSH_INTERVAL_MS,
 * whichever comes first (Envoy's access log flushes every second; nginx's `access_log ...
 * buffer= flush=` does the same). A batch goes out in one synchronous write(2) from the event
 * loop (Batched), as nginx writes its buffered access log and as Node writes to a stdout pipe.
 * An asynchronous write costs a trip through libuv's thread pool, about 30 us of CPU on top of
 * the write itself: one per line was a third of the proxy's whole cost, one per batch still
 * about 0.25 us a request. The price of writing in the loop: a log reader that stops reading
 * (the container runtime) holds the proxy back when the pipe is full, where asynchronous writes
 * gathered the lines in memory without bound. What is pending is written when the process exits.
 * `SIDECAR_LOG_LEVEL` overrides the configured level, at start and after every reload (levelOf).
 * Tests pass their own destination.
 */
const FLUSH_INTERVAL_MS = 100
/** About 110 access lines: at 5,000 req/s, 45 writes a second rather than 5,000. */
const BATCH_BYTES = 32_768

export function createLogger(opts: LogOptions, destination?: DestinationStream): Logger {
  return pino(
    {
      level: levelOf(opts.level),
      base: { pid: process.pid },
      timestamp: () => `,"time":"${isoNow()}"`,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? stdout(),
  )
}

/** One request's access line (layers/access-log.ts). Optional fields are left out when undefined. */
export interface AccessLine {
  requestId: string
  client: string
  /** Who the per-client policies counted, when not `client` (server/client-identity.ts). */
  clientKey: string | undefined
  method: string
  path: string
  status: number
  route: string
  backend: string
  /** Written rounded to the microsecond. */
  durationMs: number
  bytesIn: number
  bytesOut: number
  attempts: number | undefined
  error: string | undefined
  incomplete: true | undefined
  tunnel: string | undefined
  trace_id: string | undefined
  span_id: string | undefined
}

const INFO = 30

/**
 * Writes access lines to `logger`'s destination, in the same shape pino gives every other line
 * (level, time, pid, msg first). pino's generic serialiser walks the object key by key; one line
 * per request is worth a template of its own (about 0.35 us against 1.0). Lines below the
 * logger's level are dropped, as pino drops them.
 */
export function accessLog(logger: Logger): (line: AccessLine) => void {
  const out = (logger as unknown as Record<symbol, DestinationStream>)[pino.symbols.streamSym]!
  const head = `{"level":"info","time":"`
  const pid = `","pid":${process.pid},"msg":"request","requestId":`
  return (l) => {
    if (logger.levelVal > INFO) return
    const key = l.clientKey === undefined ? '' : `,"clientKey":"${esc(l.clientKey)}"`
    let line = `${head}${isoNow()}${pid}"${esc(l.requestId)}","client":"${esc(l.client)}"${key},"method":"${esc(l.method)}","path":"${esc(l.path)}","status":${l.status},"route":"${esc(l.route)}","backend":"${esc(l.backend)}","durationMs":${milliseconds(l.durationMs)},"bytesIn":${l.bytesIn},"bytesOut":${l.bytesOut}`
    if (l.attempts !== undefined) line += `,"attempts":${l.attempts}`
    if (l.error !== undefined) line += `,"error":"${esc(l.error)}"`
    if (l.incomplete !== undefined) line += `,"incomplete":true`
    if (l.tunnel !== undefined) line += `,"tunnel":"${esc(l.tunnel)}"`
    if (l.trace_id !== undefined) line += `,"trace_id":"${esc(l.trace_id)}"`
    if (l.span_id !== undefined) line += `,"span_id":"${esc(l.span_id)}"`
    out.write(`${line}}\n`)
  }
}

/** `s` as it goes between the quotes of a JSON string: printable ASCII without `"` or `\`
 *  (ids, addresses, names, most paths) as it is, which makes no string and skips a call into
 *  the runtime; anything else through JSON.stringify. */
function esc(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) return JSON.stringify(s).slice(1, -1)
  }
  return s
}

/** A count of milliseconds to at most three decimals (a microsecond), as `String(ms)` writes it
 *  rounded so: from integers, whose text V8 keeps cached, not through its shortest-double
 *  printing. */
export function milliseconds(ms: number): string {
  const us = Math.round(ms * 1000)
  if (!Number.isSafeInteger(us) || us < 0) return String(us / 1000)
  const whole = Math.floor(us / 1000)
  const f = us - whole * 1000
  if (f === 0) return `${whole}`
  if (f % 100 === 0) return `${whole}.${f / 100}`
  if (f % 10 === 0) return `${whole}.${f < 100 ? '0' : ''}${f / 10}`
  return `${whole}.${f < 10 ? '00' : f < 100 ? '0' : ''}${f}`
}

/** Standard output, written in batches (see above). */
function stdout(): DestinationStream {
  const batched = new Batched(1)
  setInterval(() => batched.flush(), FLUSH_INTERVAL_MS).unref()
  process.once('exit', () => batched.flush())
  return batched
}

/**
 * Lines gathered as UTF-8 in one buffer and written with write(2) when BATCH_BYTES have
 * gathered, or when flushed. Each line is encoded once, into the buffer: no joined string, no
 * second pass to measure it (sonic-boom's, 0.4 us a request between them).
 */
class Batched implements DestinationStream {
  /** Room for a batch and a line of up to about 10,000 characters past it. */
  private readonly buf = Buffer.allocUnsafeSlow(2 * BATCH_BYTES)
  private used = 0

  constructor(private readonly fd: number) {}

  write(line: string): void {
    // a UTF-16 unit takes at most 3 bytes of UTF-8
    if (line.length * 3 > this.buf.length - this.used) {
      this.flush()
      if (line.length * 3 > this.buf.length) return this.send(Buffer.from(line))
    }
    this.used += this.buf.write(line, this.used)
    if (this.used >= BATCH_BYTES) this.flush()
  }

  flush(): void {
    if (this.used === 0) return
    const bytes = this.buf.subarray(0, this.used)
    this.used = 0
    this.send(bytes)
  }

  /** All of `bytes`, however many writes it takes. A descriptor someone made non-blocking is
   *  waited on as a blocking one would be; one that is gone (EPIPE, EBADF) loses the lines, not
   *  the process. */
  private send(bytes: Buffer): void {
    let done = 0
    while (done < bytes.length) {
      try {
        done += writeSync(this.fd, bytes, done)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return
        Atomics.wait(PAUSE, 0, 0, 1)
      }
    }
  }
}

const PAUSE = new Int32Array(new SharedArrayBuffer(4))

let isoSecond = -1
let isoPrefix = ''
let isoMs = -1
let isoText = ''

/** `new Date().toISOString()`, with the part up to the second made once a second, and the whole
 *  once a millisecond (a busy proxy logs several lines in one). */
function isoNow(): string {
  const now = Date.now()
  if (now === isoMs) return isoText
  const ms = now % 1000
  const second = now - ms
  if (second !== isoSecond) {
    isoSecond = second
    isoPrefix = new Date(second).toISOString().slice(0, 20)
  }
  isoMs = now
  isoText = `${isoPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z`
  return isoText
}

/** The level to log at: `SIDECAR_LOG_LEVEL` when set (an operator turning debug on for a pod
 *  keeps it across ConfigMap reloads), else the config's. */
export function levelOf(configured: string): string {
  return process.env.SIDECAR_LOG_LEVEL || configured
}
