// Request limits the listener's parser does not enforce itself: the header count (431; Node
// would silently drop the extra headers), a Transfer-Encoding other than plain `chunked` (501:
// Node's parser accepts `gzip, chunked` and hands over the body still gzip-coded, which the app
// would then take for the plain body; RFC 9112 6.1 says answer 501) and the body size (413). A declared Content-Length over
// the cap is refused before anything is forwarded; a chunked body is counted as it streams and,
// past the cap, the upstream request is aborted (the app never sees a complete request) and the
// client gets 413 if no response has started.
import { Transform, type TransformCallback } from 'node:stream'
import { SidecarError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { Layer, Reply } from '../pipeline/types.js'

export interface LimitsOptions {
  maxHeaderCount: number
  maxBodyBytes: number
}

export function createLimitsLayer(opts: LimitsOptions, deps: { metrics: Metrics }): Layer {
  const reject = (reply: Reply, code: 'headers_too_large' | 'unsupported_transfer_encoding' | 'body_too_large', detail: string): void => {
    deps.metrics.countRejection(code)
    reply.fail(new SidecarError(code, { detail }))
  }
  return (next) => (req, ctx, reply) => {
    if (req.headerCount > opts.maxHeaderCount) {
      return reject(reply, 'headers_too_large', `${req.headerCount} headers, at most ${opts.maxHeaderCount}`)
    }
    if (req.transferEncoding !== null && req.transferEncoding.trim().toLowerCase() !== 'chunked') {
      return reject(reply, 'unsupported_transfer_encoding', `Transfer-Encoding: ${req.transferEncoding}`)
    }
    if (req.body === null || Buffer.isBuffer(req.body)) return next(req, ctx, reply)
    if (req.contentLength !== null) {
      if (req.contentLength > opts.maxBodyBytes) {
        return reject(reply, 'body_too_large', `Content-Length ${req.contentLength}, at most ${opts.maxBodyBytes}`)
      }
      return next(req, ctx, reply)
    }
    const counted = new BodyCap(opts.maxBodyBytes, () => deps.metrics.countRejection('body_too_large'))
    req.body.on('error', (err) => counted.destroy(err))
    next({ ...req, body: req.body.pipe(counted) }, ctx, reply)
  }
}

class BodyCap extends Transform {
  private seen = 0
  constructor(
    private readonly max: number,
    private readonly onExceeded: () => void,
  ) {
    super()
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length
    if (this.seen > this.max) {
      this.onExceeded()
      done(new SidecarError('body_too_large', { detail: `chunked body passed ${this.max} bytes` }))
    } else {
      done(null, chunk)
    }
  }
}
