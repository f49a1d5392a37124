// The app behind the proxies under attack: a small JSON answer, 1 MiB at /big (for slow
// readers). It counts the requests for / (what the HTTP/2 floods open; health checks and the
// honest client's /legit aside) and tells the count at /count (asked directly).
import http from 'node:http'

const small = JSON.stringify({ ok: true })
const big = Buffer.alloc(1024 * 1024, 'x')
let requests = 0
http
  .createServer((req, res) => {
    req.resume()
    if (req.url === '/count') return res.end(String(requests))
    if (req.url === '/' && req.headers['user-agent'] !== 'sidecar-proxy-probe') requests++
    const body = req.url === '/big' ? big : small
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body)
  })
  .listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'))
