// Outermost layer: the one place where the pipeline's errors become HTTP responses. Whatever a
// layer below throws leaves here as the catalogue's local reply (pipeline/local-reply.ts); the
// code is also put on the context for the access log and metrics.
import { toSidecarError } from '../errors.js'
import { callNext } from '../pipeline/compose.js'
import { isGrpc, localReply } from '../pipeline/local-reply.js'
import type { Layer, ProxyResponse } from '../pipeline/types.js'

export function createRespondLayer(): Layer {
  return (next) => (req, ctx) => {
    const reply = (err: unknown): ProxyResponse => {
      const error = toSidecarError(err)
      ctx.error = error.code
      return localReply(error, { requestId: ctx.id, grpc: isGrpc(req.headers['content-type']) })
    }
    return callNext(next, req, ctx).then(undefined, reply)
  }
}
