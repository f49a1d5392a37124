// An app of fixed capacity, as a gunicorn with N workers is: `node capacity-app.mjs PORT
// CAPACITY SERVICE_MS`. It serves CAPACITY requests at once, each taking SERVICE_MS; the rest wait
// in its own queue (FIFO), so that past its capacity every request's latency grows with the
// queue, as a real app's does. Control, for the benchmark:
//   GET /__stats        {"served", "open", "peakOpen"}: requests served, connections open now
//                       and at most since the last reset
//   POST /__reset       zeroes the counts
//   POST /__slow?x=2    every request takes x times SERVICE_MS from now on (x=1: back)
import http from 'node:http'

const [port, capacity, serviceMs] = process.argv.slice(2).map(Number)
let factor = 1
let busy = 0
const queue = []
const stats = { served: 0, open: 0, peakOpen: 0 }

function serve(res) {
  busy++
  setTimeout(() => {
    busy--
    stats.served++
    res.end('{"ok":true}')
    const next = queue.shift()
    if (next) serve(next)
  }, serviceMs * factor)
}

const server = http.createServer((req, res) => {
  if (req.url === '/__stats') return res.end(JSON.stringify(stats))
  if (req.url === '/__reset') return res.end(JSON.stringify(Object.assign(stats, { served: 0, peakOpen: stats.open })))
  if (req.url.startsWith('/__slow')) {
    factor = Number(new URL(req.url, 'http://x').searchParams.get('x') ?? 1)
    return res.end(JSON.stringify({ factor }))
  }
  res.setHeader('content-type', 'application/json')
  if (busy < capacity) serve(res)
  else queue.push(res)
})
server.keepAliveTimeout = 60_000
server.on('connection', (socket) => {
  stats.open++
  stats.peakOpen = Math.max(stats.peakOpen, stats.open)
  socket.on('close', () => stats.open--)
})
server.listen(port, '127.0.0.1')
