// A small plain-HTTP app to put the sidecar in front of: the example in k8s/, the app of the pod
// simulation and of `npm run demo`. No dependencies, so it runs from the sidecar's own image.
//
//   APP_NAME     what it answers with (default "app"; the demo runs a "canary" too)
//   APP_ADDRESS  host:port to listen on (default 127.0.0.1:8080: loopback only, as in the pod)
//   STOP_DELAY_MS  on SIGTERM, keep serving this long before closing (endpoints take a moment to
//                  forget a terminating pod), then finish what is in flight and exit 0. From the
//                  signal on, every answer says Connection: close and /healthz fails: a
//                  keep-alive client (the sidecar's pool, its health checks) would otherwise hold
//                  the server open forever.
//
//   GET  /anything          200 {"app", "method", "path"}, after the configured delay
//   GET  /anything?delayMs=N   the same, this request N ms late
//   GET  /healthz           200 while not failing (the sidecar's health check)
//   POST /control?delayMs=N&failRate=F   make it slow (N ms) or fail (500 with probability F)
import http from 'node:http'

const name = process.env.APP_NAME ?? 'app'
const [host, port] = (process.env.APP_ADDRESS ?? '127.0.0.1:8080').split(/:(?=\d+$)/)
const stopDelayMs = Number(process.env.STOP_DELAY_MS ?? 0)
const state = { delayMs: 0, failRate: 0 }
let stopping = false

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://app')
  const reply = (status, body) => {
    const headers = { 'content-type': 'application/json', ...(stopping && { connection: 'close' }) }
    res.writeHead(status, headers).end(JSON.stringify(body) + '\n')
  }
  if (req.method === 'POST' && url.pathname === '/control') {
    for (const key of ['delayMs', 'failRate']) {
      const value = url.searchParams.get(key)
      if (value !== null) state[key] = Number(value)
    }
    return reply(200, { app: name, ...state })
  }
  if (url.pathname === '/healthz') {
    const healthy = !stopping && state.failRate < 1
    return reply(healthy ? 200 : 503, { app: name, healthy, stopping })
  }
  const delayMs = Number(url.searchParams.get('delayMs') ?? state.delayMs) || 0
  setTimeout(() => {
    if (Math.random() < state.failRate) return reply(500, { app: name, error: 'failing on purpose: failRate set by POST /control' })
    reply(200, { app: name, method: req.method, path: req.url })
  }, delayMs)
})

server.listen(Number(port), host, () => console.log(JSON.stringify({ msg: 'listening', app: name, address: `${host}:${port}` })))

process.once('SIGTERM', () => {
  stopping = true
  console.log(JSON.stringify({ msg: 'SIGTERM: still serving, then closing', app: name, stopDelayMs }))
  setTimeout(() => {
    server.close(() => process.exit(0))
    server.closeIdleConnections()
  }, stopDelayMs)
})
