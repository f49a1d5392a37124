// `sidecar-proxy await [--admin URL] [--timeout S] [--shutdown] -- CMD ARGS...`: for clusters
// without native sidecars (like linkerd-await). Waits until the proxy's /started answers 200 (its
// listener is bound and forwarding), then runs CMD with this process's stdio and exits with its
// exit code. Not /ready: that waits for the app's health checks, and the app is CMD itself. With --shutdown, asks the
// proxy to stop (POST /quitquitquit) once CMD has exited, so a Job's proxy ends with its app.
import { spawn } from 'node:child_process'
import http from 'node:http'
import { constants } from 'node:os'
import type { Io } from './io.js'
import { UsageError, parseFlags } from './usage.js'

const POLL_MS = 250
const DEFAULT_TIMEOUT_S = 120

export async function awaitCommand(argv: readonly string[], io: Io): Promise<number> {
  const split = argv.indexOf('--')
  const values = parseFlags(
    split < 0 ? argv : argv.slice(0, split),
    { admin: { type: 'string' }, timeout: { type: 'string' }, shutdown: { type: 'boolean' } },
    'await', io.out,
  )
  if (values === null) return 0
  if (split < 0 || split === argv.length - 1) throw new UsageError('await needs -- CMD [ARGS...]', 'await')
  const admin = (values.admin ?? 'http://127.0.0.1:9901').replace(/\/+$/, '')
  if (!/^http:\/\/[^/]+$/.test(admin)) throw new UsageError(`--admin must be http://HOST:PORT, got "${values.admin}"`, 'await')
  const timeoutS = values.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(values.timeout)
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new UsageError('--timeout must be a number of seconds above 0', 'await')
  const [cmd, ...args] = argv.slice(split + 1) as [string, ...string[]]

  const deadline = Date.now() + timeoutS * 1000
  let last = 'no answer yet'
  for (;;) {
    const answer = await get(`${admin}/started`)
    if (answer.status === 200) break
    last = answer.status === undefined ? answer.text : `${answer.status} ${answer.text.trim()}`
    if (Date.now() + POLL_MS > deadline) {
      io.err(`sidecar-proxy await: the proxy at ${admin} was not started after ${timeoutS} s (last: ${last}); ${cmd} was not started`)
      return 1
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS))
  }

  const code = await run(cmd, args, io)
  if (values.shutdown) {
    const answer = await post(`${admin}/quitquitquit`)
    if (answer.status !== 202) io.err(`sidecar-proxy await: could not stop the proxy at ${admin}: ${answer.status ?? ''} ${answer.text}`.trim())
  }
  return code
}

/** Runs the command with inherited stdio, passing signals on; resolves with its exit code. */
function run(cmd: string, args: string[], io: Io): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: 'inherit' })
    const forward = (signal: NodeJS.Signals) => child.kill(signal)
    const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP']
    for (const s of signals) process.on(s, forward)
    const done = (code: number) => {
      for (const s of signals) process.off(s, forward)
      resolve(code)
    }
    child.once('error', (err: NodeJS.ErrnoException) => {
      io.err(`sidecar-proxy await: cannot run ${cmd}: ${err.message}`)
      done(err.code === 'ENOENT' ? 127 : 126) // as shells do
    })
    child.once('exit', (code, signal) => done(code ?? 128 + (signal ? constants.signals[signal] : 0)))
  })
}

interface Answer {
  status: number | undefined
  text: string
}

function get(url: string): Promise<Answer> {
  return call(url, 'GET')
}

function post(url: string): Promise<Answer> {
  return call(url, 'POST')
}

function call(url: string, method: string): Promise<Answer> {
  return new Promise((resolve) => {
    const req = http.request(url, { method, timeout: 2000, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode, text }))
      res.on('error', (err) => resolve({ status: undefined, text: err.message }))
    })
    req.on('timeout', () => req.destroy(new Error('no answer within 2 s')))
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: undefined, text: err.code ?? err.message }))
    req.end()
  })
}
