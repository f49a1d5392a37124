// The app behind the proxies under attack: a small JSON answer, 1 MiB at /big (for slow
// readers), and /slow?ms=N answering the same after N ms (the busy ingress's app: a crowd of
// requests held in flight at once). It counts the requests for / (what the HTTP/2 floods open;
// health checks, the honest client's /legit and /slow aside) and tells the count at /count
// (asked directly).
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
    const answer = () => res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body)
    if (!req.url.startsWith('/slow')) return answer()
    const ms = Number(new URL(req.url, 'http://app').searchParams.get('ms'))
    setTimeout(answer, Number.isFinite(ms) && ms > 0 ? ms : 0)
  })
  .listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'))
