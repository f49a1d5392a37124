// The floor of a Node proxy for WebSocket: node:http's 'upgrade', the handshake written to a new
// connection to the app as it came, then the two sockets piped both ways. No checks, limits,
// idle timeouts or accounting. What the sidecar's WebSocket row is measured against.
// node ws-floor.mjs PORT UPSTREAM
import http from 'node:http'
import net from 'node:net'

const [port, target] = [Number(process.argv[2]), new URL(process.argv[3])]
http
  .createServer((req, res) => res.writeHead(426).end())
  .on('upgrade', (req, socket, head) => {
    const app = net.connect(Number(target.port), target.hostname, () => {
      let lines = `${req.method} ${req.url} HTTP/1.1\r\n`
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`
      app.write(`${lines}\r\n`)
      if (head.length > 0) app.write(head)
      app.pipe(socket).pipe(app)
    })
    app.on('error', () => socket.destroy())
    socket.on('error', () => app.destroy())
  })
  .listen(port, '127.0.0.1', () => console.log('listening'))
