// Mirroring, per route (Envoy's request_mirror_policies, Istio's `mirror`): a copy of a share of
// requests goes to a shadow backend, fire and forget; its answer is read and thrown away. The
// copy never delays, fails or changes the real request:
//
// - it is sent straight to the shadow backend's pool (Upstream.shadow), past retry, pick,
//   overload and breaker: never retried, never counted by the real backends' breakers, retry
//   budget or attempt metrics;
// - it has its own cancellation and deadline (the route's timeout, else limits.requestTimeoutMs),
//   so a hung shadow holds a slot for that long at most, and at most `maxInFlight` copies are
//   out at once; past that a copy is dropped (counted), never queued;
// - its body is the real one's: a body received whole (layers/receive.ts) is the same Buffer; a
//   streamed body is teed as it flows to the real backend, the copy written without waiting
//   for the shadow (the real body's pace is the real backend's alone). The copy keeps at most
//   retry.maxReplayBytes; a body larger than that (declared, or found so as it streams) is not
//   mirrored: skipped_body, and a copy already under way is cut.
//
// The copy's Host (and so its HTTP/2 :authority) gets "-shadow" after the host name, before any
// port (Envoy's and Istio's convention since envoy#2600: shop.default.svc:8443 becomes
// shop.default.svc-shadow:8443), so that the shadow and its logs can tell copies from traffic.
//
// It sits below fault injection (an aborted request is not mirrored) and receive (a small body is
// a Buffer by then, copied for free), above retry (one copy per request, not per attempt).
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream'
import type { Clock } from '../clock.js'
import { SidecarError } from '../errors.js'
import type { Metrics, MirrorResult } from '../metrics.js'
import { Cancel } from '../pipeline/cancel.js'
import type { Layer, ProxyRequest, ProxyResponse } from '../pipeline/types.js'

export interface MirrorOptions {
  /** The shadow backend's name (for the metric). */
  backend: string
  percent: number
  maxInFlight: number
  /** retry.maxReplayBytes of the route: the largest body copied. */
  maxBodyBytes: number
  /** The copy's deadline, its answer's body included. */
  timeoutMs: number
}

export interface MirrorDeps {
  metrics: Pick<Metrics, 'countMirror'>
  clock: Clock
  /** [0, 1): which requests are copied. */
  random?: (() => number) | undefined
  /** Sends a copy to the shadow backend's pool of the moment; undefined when a reload removed it. */
  send: (req: ProxyRequest, signal: Cancel) => Promise<ProxyResponse> | undefined
}

export function createMirrorLayer(opts: MirrorOptions, deps: MirrorDeps): Layer {
  const random = deps.random ?? Math.random
  const { backend, percent, maxInFlight, maxBodyBytes, timeoutMs } = opts
  const { metrics, clock } = deps
  let inFlight = 0

  /** Sends the copy and follows it to its end; `cut` is set when its body stopped being copied. */
  const launch = (copy: ProxyRequest, cut: { result: MirrorResult | undefined }): void => {
    inFlight++
    const cancel = new Cancel()
    let response: ProxyResponse | undefined
    let over = false
    const finish = (result: MirrorResult) => {
      if (over) return
      over = true
      stopTimer()
      inFlight--
      metrics.countMirror(backend, cut.result ?? result)
    }
    const stopTimer = clock.timeout(timeoutMs, () => {
      const err = new SidecarError('upstream_timeout', { detail: `mirrored copy not done within ${timeoutMs} ms` })
      cancel.abort(err)
      discard(response?.body, err)
      if (copy.body !== null && !Buffer.isBuffer(copy.body)) copy.body.destroy()
      finish('failed')
    })
    const sent = deps.send(copy, cancel)
    if (sent === undefined) {
      if (copy.body !== null && !Buffer.isBuffer(copy.body)) copy.body.destroy()
      return finish('failed')
    }
    sent.then(
      (res) => {
        response = res
        const body = res.body
        if (body === null || Buffer.isBuffer(body)) return finish('sent')
        // read and thrown away; the slot is held until the answer is over
        body.once('end', () => finish('sent'))
        body.once('error', () => finish('sent'))
        body.once('close', () => finish('sent'))
        body.resume()
      },
      () => finish('failed'),
    )
  }

  return (next) => (req, ctx, reply) => {
    if (req.upgrade !== undefined || (percent < 100 && random() * 100 >= percent)) return next(req, ctx, reply)
    if (inFlight >= maxInFlight) {
      metrics.countMirror(backend, 'dropped')
      return next(req, ctx, reply)
    }
    const body = req.body
    const declared = body === null ? 0 : Buffer.isBuffer(body) ? body.length : req.contentLength
    if (declared !== null && declared > maxBodyBytes) {
      metrics.countMirror(backend, 'skipped_body')
      return next(req, ctx, reply)
    }
    const headers = { ...req.headers }
    const host = headers.host
    if (typeof host === 'string') headers.host = shadowHost(host)
    const cut: { result: MirrorResult | undefined } = { result: undefined }
    if (body === null || Buffer.isBuffer(body)) {
      launch({ ...req, headers, faultAsked: undefined }, cut)
      return next(req, ctx, reply)
    }
    const { real, copy } = tee(body, maxBodyBytes, () => (cut.result = 'skipped_body'))
    launch({ ...req, headers, body: copy, faultAsked: undefined }, cut)
    next({ ...req, body: real }, ctx, reply)
  }
}

/** `host[:port]` with "-shadow" after the host name: `shop.default.svc:8443` ->
 *  `shop.default.svc-shadow:8443`, `[::1]:8080` -> `[::1]-shadow:8080`. */
export function shadowHost(host: string): string {
  const colon = host.lastIndexOf(':')
  const hasPort = colon > host.lastIndexOf(']') && /^\d+$/.test(host.slice(colon + 1))
  return hasPort ? `${host.slice(0, colon)}-shadow${host.slice(colon)}` : `${host}-shadow`
}

/**
 * `body` as two streams: `real`, which passes every chunk on at its reader's pace (the real
 * backend's: backpressure as before), and `copy`, written each chunk without waiting for its
 * reader. The copy holds `max` bytes at most: past that it is cut (`onCut`) and the real body
 * goes on alone. An error of the body reaches both.
 */
function tee(body: Readable, max: number, onCut: () => void): { real: Readable; copy: Readable } {
  const copy = new PassThrough({ highWaterMark: max })
  let size = 0
  let copying = true
  const real = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) {
      if (copying) {
        size += chunk.length
        if (size <= max) copy.write(chunk)
        else {
          copying = false
          onCut()
          copy.destroy(new Error('mirrored body over retry.maxReplayBytes'))
        }
      }
      done(null, chunk)
    },
    flush(done: TransformCallback) {
      if (copying) copy.end()
      done()
    },
  })
  body.once('error', (err) => {
    real.destroy(err)
    copy.destroy(err)
  })
  // the copy's errors (its shadow went away) are the copy's alone
  copy.on('error', noop)
  body.pipe(real)
  return { real, copy }
}

function discard(body: Readable | Buffer | null | undefined, err: Error): void {
  if (body && !Buffer.isBuffer(body)) body.on('error', noop).destroy(err)
}

function noop(): void {}
