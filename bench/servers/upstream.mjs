// The fast upstream every target forwards to: a fixed small JSON answer, keep-alive.
import http from 'node:http'

const body = JSON.stringify({ ok: true, service: 'bench-upstream' })
const port = Number(process.argv[2])
http
  .createServer((req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body)
  })
  .listen(port, '127.0.0.1')
