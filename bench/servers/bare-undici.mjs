// The floor of any Node proxy: node:http in, an undici Pool out through `dispatch` with a raw
// handler that writes straight to the client's response, hop-by-hop headers dropped both ways,
// bodies streamed with backpressure. Nothing else: no logging, metrics, limits or error handling
// worth the name. What the sidecar's CPU and memory are measured against.
import http from 'node:http'
import { Pool } from 'undici'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const pool = new Pool(target, { connections: 128 })
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect', 'http2-settings'])

/** Raw name/value pairs without the hop-by-hop ones, as strings. */
function endToEnd(raw) {
  const out = []
  for (let i = 0; i < raw.length; i += 2) {
    const name = String(raw[i])
    if (!HOP.has(name.toLowerCase())) out.push(name, String(raw[i + 1]))
  }
  return out
}

http
  .createServer((req, res) => {
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
    pool.dispatch(
      { method: req.method, path: req.url, headers: endToEnd(req.rawHeaders), body: hasBody ? req : null },
      {
        onConnect(abort) {
          res.once('close', () => res.writableFinished || abort())
        },
        onHeaders(status, rawHeaders, resume) {
          if (status < 200) return true
          res.writeHead(status, endToEnd(rawHeaders))
          res.on('drain', resume)
          return true
        },
        onData(chunk) {
          return res.write(chunk)
        },
        onComplete() {
          res.end()
        },
        onError() {
          if (res.headersSent) res.destroy()
          else res.writeHead(502).end()
        },
      },
    )
  })
  .listen(port, '127.0.0.1')
