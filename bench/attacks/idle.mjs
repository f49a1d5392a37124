// Idle connections: `node bench/attacks/idle.mjs PORT COUNT SECONDS FIRST` opens COUNT TLS
// connections (handshake done, then silence), 1,000 from each loopback address from 127.0.0.FIRST
// on, as many clients would, and holds them for SECONDS. Prints one JSON line of counts.
import tls from 'node:tls'

const [port, count, seconds, first] = process.argv.slice(2).map(Number)
const PER_ADDRESS = 1000
const AT_ONCE = 200
const end = Date.now() + seconds * 1000
const counts = { opened: 0, failed: 0, closedByServer: 0 }
const sockets = []

function open(i) {
  return new Promise((resolve) => {
    const socket = tls.connect({ port, host: '127.0.0.1', localAddress: `127.0.0.${first + Math.floor(i / PER_ADDRESS)}`, rejectUnauthorized: false, servername: 'localhost', ALPNProtocols: ['http/1.1'] })
    socket.once('secureConnect', () => {
      counts.opened++
      resolve()
    })
    socket.once('error', () => {})
    socket.once('close', () => {
      if (Date.now() < end) counts.closedByServer++
      resolve()
    })
    sockets.push(socket)
  })
}

let next = 0
await Promise.all(
  Array.from({ length: AT_ONCE }, async () => {
    while (next < count && Date.now() < end) await open(next++)
  }),
)
counts.failed = count - counts.opened
await new Promise((resolve) => setTimeout(resolve, Math.max(0, end - Date.now())))
for (const s of sockets) s.destroy()
console.log(JSON.stringify(counts))
process.exit(0)
