import type { Handler, Layer, ProxyRequest, ProxyResponse, RequestContext } from './types.js'

/** Wraps `terminal` in `layers`, the first layer outermost. */
export function compose(layers: readonly Layer[], terminal: Handler): Handler {
  return layers.reduceRight<Handler>((next, layer) => layer(next), terminal)
}

/** Calls the next handler for a layer that goes on from its promise (`.then`, no `await`): a
 *  handler that throws instead of rejecting still gives a rejected promise. */
export function callNext(next: Handler, req: ProxyRequest, ctx: RequestContext): Promise<ProxyResponse> {
  try {
    return next(req, ctx)
  } catch (err) {
    return Promise.reject(err)
  }
}
