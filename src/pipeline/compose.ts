import type { Handler, Layer } from './types.js'

/** Wraps `terminal` in `layers`, the first layer outermost. */
export function compose(layers: readonly Layer[], terminal: Handler): Handler {
  return layers.reduceRight<Handler>((next, layer) => layer(next), terminal)
}
