import type { Handler, Layer, ProxyRequest, ProxyResponse, Reply, RequestContext } from './types.js'

/** Wraps `terminal` in `layers`, the first layer outermost. */
export function compose(layers: readonly Layer[], terminal: Handler): Handler {
  return layers.reduceRight<Handler>((next, layer) => layer(next), terminal)
}

/** Calls the next handler for a layer that holds something until the outcome (a slot, a count,
 *  a try) or goes on from a later turn (after a body, a delay): a handler that throws instead of
 *  answering still answers `reply`. */
export function pass(next: Handler, req: ProxyRequest, ctx: RequestContext, reply: Reply): void {
  try {
    next(req, ctx, reply)
  } catch (err) {
    reply.fail(err)
  }
}

/** An answer that goes to no one (a try retried, a second answer, a client gone): its streamed
 *  body and its tunnel are let go. Destroying a body may emit 'error'; with no listener that
 *  would crash the process. */
export function release(response: ProxyResponse | undefined): void {
  const body = response?.body
  if (body && !Buffer.isBuffer(body)) body.on('error', noop).destroy()
  response?.tunnel?.destroy()
}

function noop(): void {}
