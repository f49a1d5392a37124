// The floor of a Node proxy for gRPC: an h2c server on Node's core stream API, each stream
// forwarded on one h2c session to the app (headers, body, and the app's trailers after its
// body). No checks, limits, retries or accounting. What the sidecar's gRPC row is measured against.
// node grpc-floor.mjs PORT UPSTREAM
import http2 from 'node:http2'

const [port, target] = [Number(process.argv[2]), process.argv[3]]
const app = http2.connect(target)
http2
  .createServer()
  .on('stream', (stream, headers) => {
    const out = {}
    for (const name of Object.keys(headers)) if (name !== ':authority' && name !== ':scheme') out[name] = headers[name]
    const call = app.request(out, { endStream: stream.endAfterHeaders })
    let trailers = {}
    call.on('trailers', (t) => (trailers = t))
    call.on('response', (h) => {
      stream.respond(h, { waitForTrailers: true })
      call.pipe(stream)
    })
    stream.on('wantTrailers', () => stream.sendTrailers(trailers))
    call.on('error', () => stream.destroy())
    stream.on('error', () => call.destroy())
    if (!stream.endAfterHeaders) stream.pipe(call)
  })
  .listen(port, '127.0.0.1', () => console.log('listening'))
