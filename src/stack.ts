// The request path, top to bottom: the one ordered list of layers. Nothing is inserted by name
// anywhere else; a new policy is a new line here and a new file in layers/.
import type { Config } from './config/schema.js'
import { createAccessLogLayer } from './layers/access-log.js'
import { createLimitsLayer } from './layers/limits.js'
import { createPickLayer } from './layers/pick.js'
import { createRespondLayer } from './layers/respond.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import { compose } from './pipeline/compose.js'
import type { Handler, Layer } from './pipeline/types.js'
import type { Upstreams } from './upstream/client.js'

export interface StackDeps {
  logger: Logger
  metrics: Metrics
  upstreams: Upstreams
}

export function buildStack(config: Config, deps: StackDeps): Handler {
  const layers: Layer[] = [
    createRespondLayer(), //                        errors -> HTTP status + x-sidecar-error
    createAccessLogLayer(config.log, deps), //      one JSON line and the request metrics
    createLimitsLayer(config.limits, deps), //      header count 431, body size 413
    createPickLayer(config.backends), //            weighted backend choice per request
  ]
  return compose(layers, deps.upstreams.handler(deps)) // undici Pool per backend
}
