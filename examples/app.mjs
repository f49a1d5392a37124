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
//   GET  /ws (WebSocket)    echoes each text message as {"app", "echo"}
import { createHash } from 'node:crypto'
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

// A WebSocket echo in a few lines (RFC 6455: the handshake, text, ping and close frames of up to
// 64 KiB), so that the app needs no package.
server.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key']
  if (req.url !== '/ws' || req.headers.upgrade?.toLowerCase() !== 'websocket' || !key) return socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n')
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`)
  const send = (opcode, payload) => {
    const head = payload.length < 126 ? Buffer.from([0x80 | opcode, payload.length]) : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff])
    socket.write(Buffer.concat([head, payload]))
  }
  let buffered = Buffer.alloc(0)
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 2) {
      const opcode = buffered[0] & 0x0f
      let length = buffered[1] & 0x7f
      let offset = 2
      if (length === 126) [length, offset] = [buffered.readUInt16BE(2), 4]
      else if (length === 127) return socket.destroy() // over 64 KiB: not in this example
      if (buffered.length < offset + 4 + length) return // the rest of the frame is still coming
      const mask = buffered.subarray(offset, offset + 4)
      const payload = Buffer.from(buffered.subarray(offset + 4, offset + 4 + length).map((b, i) => b ^ mask[i % 4]))
      buffered = buffered.subarray(offset + 4 + length)
      if (opcode === 0x1) send(0x1, Buffer.from(JSON.stringify({ app: name, echo: payload.toString() })))
      else if (opcode === 0x9) send(0xa, payload)
      else if (opcode === 0x8) {
        send(0x8, payload.subarray(0, 125)) // the close echoed, its code included
        return socket.end()
      }
    }
  })
  socket.on('error', () => socket.destroy())
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
