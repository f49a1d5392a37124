// Helpers shared by the benchmark (run.mjs) and the soak (soak.mjs).
import net from 'node:net'

/** A loopback port nothing listens on (bound, then released). */
export async function freePort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
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
