// Outermost layer: the one place where the pipeline's errors become HTTP responses. Whatever a
// layer below fails with (or throws) leaves here as the catalogue's local reply
// (pipeline/local-reply.ts); the code is also put on the context for the access log and metrics.
// It is also the guard of the contract: the caller is answered once, whatever a layer below does.
import { toSidecarError } from '../errors.js'
import { release } from '../pipeline/compose.js'
import { isGrpc, localReply } from '../pipeline/local-reply.js'
import type { Layer, ProxyRequest, ProxyResponse, Reply, RequestContext } from '../pipeline/types.js'

export function createRespondLayer(): Layer {
  return (next) => (req, ctx, reply) => {
    const once = new Respond(req, ctx, reply)
    try {
      next(req, ctx, once)
    } catch (err) {
      once.fail(err)
    }
  }
}

class Respond implements Reply {
  private answered = false

  constructor(
    private readonly req: ProxyRequest,
    private readonly ctx: RequestContext,
    private readonly up: Reply,
  ) {}

  ok(response: ProxyResponse): void {
    if (this.answered) return release(response)
    this.answered = true
    this.up.ok(response)
  }

  fail(err: unknown): void {
    if (this.answered) return
    this.answered = true
    const error = toSidecarError(err)
    // a client the listener cut for its slowness stays so: what fails below is the cut's echo
    if (this.ctx.error !== 'client_slow') this.ctx.error = error.code
    this.up.ok(localReply(error, { requestId: this.ctx.id, grpc: isGrpc(this.req.headers['content-type']) }))
  }
}
