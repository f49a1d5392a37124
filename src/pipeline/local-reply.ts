// The one builder of every response the proxy makes up (Envoy's "local reply"): from the layers'
// errors (layers/respond.ts) to the listener's refusals and what Node's parser refused. Each
// carries `x-sidecar-error`, `x-request-id` and `cache-control: no-store`; a gRPC request gets a
// gRPC-shaped answer (HTTP 200, `grpc-status` and `grpc-message` in a trailers-only response)
// that gRPC clients can read, everything else a small JSON body.
import { ERRORS, type SidecarError } from '../errors.js'
import type { HeaderMap, ProxyResponse } from './types.js'

export interface LocalReplyOptions {
  requestId: string
  /** The request's content-type was application/grpc*. */
  grpc: boolean
}

export function localReply(error: SidecarError, o: LocalReplyOptions): ProxyResponse & { body: Buffer } {
  const headers: HeaderMap = {
    'x-sidecar-error': error.code,
    'x-request-id': o.requestId,
    'cache-control': 'no-store',
  }
  if (error.retryAfterSeconds !== undefined) headers['retry-after'] = String(Math.max(1, Math.ceil(error.retryAfterSeconds)))
  if (o.grpc) {
    headers['content-type'] = 'application/grpc'
    headers['grpc-status'] = String(error.grpcStatus ?? ERRORS[error.code].grpcStatus)
    headers['grpc-message'] = encodeURIComponent(error.message)
    return { status: 200, headers, body: Buffer.alloc(0) }
  }
  const body = Buffer.from(JSON.stringify({ error: error.code, message: error.message, requestId: o.requestId }) + '\n')
  headers['content-type'] = 'application/json'
  headers['content-length'] = String(body.length)
  return { status: error.status, headers, body }
}

/** A route's fixed answer (routes[].direct): the operator's status and text, no error code. */
export function directReply(status: number, body: Buffer, requestId: string): ProxyResponse & { body: Buffer } {
  const headers: HeaderMap = {
    'x-request-id': requestId,
    'cache-control': 'no-store',
    'content-type': 'text/plain; charset=utf-8',
    'content-length': String(body.length),
  }
  return { status, headers, body }
}

/** Whether a request is gRPC (and so must get gRPC-shaped answers). */
export function isGrpc(contentType: string | string[] | undefined): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc')
}
