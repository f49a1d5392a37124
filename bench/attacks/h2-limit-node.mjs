// What Node's own http2 server does with streams opened past a limit the client acknowledged,
// nothing of the proxy in it: `node bench/attacks/h2-limit-node.mjs`. An h2c server advertising
// 100 streams; a client that acknowledges the SETTINGS, then opens 200 streams at once. RFC 9113
// 5.1.2 allows refusing the 100 past the limit one by one (REFUSED_STREAM) and serving the rest;
// nghttp2, as Node drives it, ends the connection instead, and Node destroys it before nghttp2's
// GOAWAY is written. Prints the frames the client got and what the server saw.
import http2 from 'node:http2'
import net from 'node:net'
import { PREFACE, frame } from './frames.mjs'

const server = http2.createServer({ settings: { maxConcurrentStreams: 100 } }, (_req, res) => res.end('ok'))
const seen = []
server.on('session', (session) => session.on('error', (e) => seen.push(`session error ${e.code}: ${e.message}`)))
server.listen(0, '127.0.0.1', () => {
  const authority = Buffer.from('localhost')
  const get = Buffer.concat([Buffer.from([0x82, 0x86, 0x84, 0x01, authority.length]), authority]) // GET http / localhost
  const names = ['DATA', 'HEADERS', 'PRIORITY', 'RST_STREAM', 'SETTINGS', 'PUSH', 'PING', 'GOAWAY', 'WINDOW_UPDATE', 'CONTINUATION']
  const got = {}
  const socket = net.connect(server.address().port, '127.0.0.1')
  let buffered = Buffer.alloc(0)
  let sent = false
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 9 && buffered.length >= 9 + buffered.readUIntBE(0, 3)) {
      const length = buffered.readUIntBE(0, 3)
      const [type, flags, payload] = [buffered[3], buffered[4], buffered.subarray(9, 9 + length)]
      buffered = buffered.subarray(9 + length)
      const name = names[type] ?? type
      const detail = type === 3 ? ` ${payload.readUInt32BE(0)}` : type === 7 ? ` last ${payload.readUInt32BE(0)} code ${payload.readUInt32BE(4)}` : ''
      got[name + detail] = (got[name + detail] ?? 0) + 1
      if (type === 4 && !(flags & 1)) {
        socket.write(frame(4, 1, 0)) // the acknowledgement
        if (!sent) {
          sent = true
          // a PING after it: answered only once the acknowledgement was read
          socket.write(frame(6, 0, 0, Buffer.alloc(8)))
        }
      }
      if (type === 6 && flags & 1) {
        const burst = []
        for (let i = 0; i < 200; i++) burst.push(frame(1, 0x5, 1 + 2 * i, get))
        socket.write(Buffer.concat(burst))
      }
    }
  })
  socket.on('error', () => {})
  socket.on('close', () => {
    console.log('the client got:', JSON.stringify(got), '- then the connection closed')
    console.log('the server saw:', seen.join('; ') || 'nothing')
    server.close()
  })
  socket.write(Buffer.concat([PREFACE, frame(4, 0, 0)]))
  setTimeout(() => socket.destroy(), 3000).unref()
})
