// A collector stand-in for the tracing rows: takes OTLP/HTTP exports, reads them whole and
// answers 200 (what a healthy OpenTelemetry Collector does), counting spans' batches only.
import http from 'node:http'

const port = Number(process.argv[2])
let exports = 0
let bytes = 0
http
  .createServer((req, res) => {
    req.on('data', (c) => (bytes += c.length))
    req.on('end', () => {
      exports++
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end()
    })
  })
  .listen(port, '127.0.0.1')
process.on('SIGTERM', () => {
  console.log(JSON.stringify({ exports, bytes }))
  process.exit(0)
})
