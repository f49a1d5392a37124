// node http-proxy 1.18.1, the engine a Node user would otherwise pick, with a keep-alive agent.
import http from 'node:http'
import httpProxy from 'http-proxy'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const proxy = httpProxy.createProxyServer({ target, agent: new http.Agent({ keepAlive: true, maxSockets: 128 }) })
proxy.on('error', (_err, _req, res) => res.writeHead?.(502).end())
http.createServer((req, res) => proxy.web(req, res)).listen(port, '127.0.0.1')
