// The floor of a Node proxy over TLS: one `http2.createSecureServer({ allowHTTP1: true })` (HTTP/2
// and HTTP/1.1 by ALPN, Node's compat request/response objects on both) and the bare forwarder's
// undici Pool.dispatch with a raw handler. No logging, metrics, limits or error handling worth
// the name. What the sidecar's TLS rows are measured against (bench/tls.mjs).
// node tls-floor.mjs PORT UPSTREAM CERT KEY
import { readFileSync } from 'node:fs'
import http2 from 'node:http2'
import { Pool } from 'undici'

const [port, target, cert, key] = [Number(process.argv[2]), process.argv[3], process.argv[4], process.argv[5]]
const pool = new Pool(target, { connections: 128 })
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect', 'http2-settings', 'host'])

/** Raw name/value pairs without the hop-by-hop ones (and HTTP/2's pseudo-headers), as strings. */
function endToEnd(raw) {
  const out = []
  for (let i = 0; i < raw.length; i += 2) {
    const name = String(raw[i]).toLowerCase()
    if (!HOP.has(name) && name[0] !== ':') out.push(name, String(raw[i + 1]))
  }
  return out
}

/** The same pairs as an object: what both of the compat API's writeHead take. */
function headersObject(raw) {
  const out = {}
  for (let i = 0; i < raw.length; i += 2) {
    const name = String(raw[i]).toLowerCase()
    if (!HOP.has(name)) out[name] = String(raw[i + 1])
  }
  return out
}

http2
  .createSecureServer({ cert: readFileSync(cert), key: readFileSync(key), allowHTTP1: true }, (req, res) => {
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
    const headers = endToEnd(req.rawHeaders)
    headers.push('host', req.headers.host ?? req.headers[':authority'] ?? 'localhost')
    pool.dispatch(
      { method: req.method, path: req.url, headers, body: hasBody ? req : null },
      {
        onConnect(abort) {
          res.once('close', () => res.writableFinished || abort())
        },
        onHeaders(status, rawHeaders, resume) {
          if (status < 200) return true
          res.writeHead(status, headersObject(rawHeaders))
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
