// Outermost layer: the one place where errors become HTTP responses. Whatever a layer below
// throws leaves here as a status from the catalogue, `x-sidecar-error: <code>` and a small JSON
// body; the code is also put on the context for the access log and metrics.
import { toSidecarError, type SidecarError } from '../errors.js'
import type { Layer, ProxyResponse } from '../pipeline/types.js'

export function createRespondLayer(): Layer {
  return (next) => async (req, ctx) => {
    try {
      return await next(req, ctx)
    } catch (err) {
      const error = toSidecarError(err)
      ctx.error = error.code
      return errorResponse(error, ctx.id)
    }
  }
}

function errorResponse(error: SidecarError, requestId: string): ProxyResponse {
  const body = Buffer.from(JSON.stringify({ error: error.code, message: error.message, requestId }) + '\n')
  return {
    status: error.status,
    headers: {
      'content-type': 'application/json',
      'content-length': String(body.length),
      'x-sidecar-error': error.code,
      'cache-control': 'no-store',
      ...(error.retryAfterSeconds !== undefined && { 'retry-after': String(Math.max(1, Math.ceil(error.retryAfterSeconds))) }),
    },
    body,
  }
}
