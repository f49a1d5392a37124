// Helpers shared by the benchmark (run.mjs), its focused A/Bs (ab.mjs, tracing.mjs) and the soak (soak.mjs).
import { execFileSync, spawn } from 'node:child_process'
import { openSync, readFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'

/** The environment the image gives the proxy: the Dockerfile's `ENV NAME=value` lines. Every Node
 *  target of the benchmarks runs with it, the bare forwarder as much as the sidecar, so that the
 *  figures are those of the process as shipped. */
export const IMAGE_ENV = Object.fromEntries([...readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8').matchAll(/^ENV (\w+)=(\S+)$/gm)].map((m) => [m[1], m[2]]))

/** A loopback port nothing listens on (bound, then released). */
export async function freePort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** `n` distinct loopback ports nothing listens on: all held while the next is bound, since two
 *  calls of freePort() in a row can be given the same one. */
export async function freePorts(n) {
  const servers = []
  for (let i = 0; i < n; i++) {
    const server = net.createServer()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    servers.push(server)
  }
  const ports = servers.map((s) => s.address().port)
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  return ports
}

/** Resolves once something accepts connections on loopback `port`; rejects after 10 s. */
export async function listening(port) {
  for (let i = 0; i < 200; i++) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s.end() && true)).on('error', () => resolve(false))
    })
    if (up) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nothing listens on ${port}`)
}

/** Processes whose output goes to `dir`/NAME.log, killed when this one exits. */
export function processes(dir) {
  const children = []
  process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL')))
  return {
    /** Starts `node args`; resolves with its pid once `port` accepts connections. */
    async start(name, args, port) {
      const out = openSync(join(dir, `${name}.log`), 'a')
      const child = spawn(process.execPath, args, { stdio: ['ignore', out, out], env: { ...process.env, ...IMAGE_ENV } })
      children.push(child)
      await listening(port)
      return child.pid
    },
  }
}

/** Resolves once the sidecar's admin port answers /ready with 200; rejects after 10 s. */
export async function waitReady(adminPort) {
  const deadline = Date.now() + 10_000
  for (;;) {
    const left = deadline - Date.now()
    if (left <= 0) throw new Error('the sidecar was not ready within 10 s')
    const ok = await fetch(`http://127.0.0.1:${adminPort}/ready`, { signal: AbortSignal.timeout(Math.min(1_000, left)) }).then((r) => r.ok, () => false)
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The median of the finite numbers in `xs`, null if there are none. */
export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  return s.length === 0 ? null : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100

/** CPU seconds (user + system) a process has used so far; NaN once it is gone. */
export function cpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  } catch {
    return NaN
  }
}

/** A memory field of /proc/PID/status (VmRSS, VmHWM) in MiB; NaN once the process is gone. */
export function memoryMiB(pid, field) {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`))
    return Number(line.split(/\s+/)[1]) / 1024
  } catch {
    return NaN
  }
}

/** The path of `cmd` on PATH, or undefined. */
export function which(cmd) {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`]).toString().trim() || undefined
  } catch {
    return undefined
  }
}

/** nginx's worker: the master's (only) child. */
export function nginxWorker(masterPid) {
  return Number(execFileSync('pgrep', ['-P', String(masterPid)]).toString().trim().split('\n')[0])
}
