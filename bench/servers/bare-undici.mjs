// The floor of any Node proxy: node:http in, an undici Pool out, bodies piped, nothing else
// (no header hygiene, no logging, no metrics, no error handling worth the name).
import http from 'node:http'
import { Pool } from 'undici'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const pool = new Pool(target, { connections: 128 })
http
  .createServer(async (req, res) => {
    try {
      const up = await pool.request({ method: req.method, path: req.url, headers: req.headers, body: req.method === 'GET' ? null : req })
      res.writeHead(up.statusCode, up.headers)
      up.body.pipe(res)
    } catch {
      res.writeHead(502).end()
    }
  })
  .listen(port, '127.0.0.1')
