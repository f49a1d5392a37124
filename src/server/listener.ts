// The client-facing listener: Node's HTTP server with explicit timeouts and size limits, the
// translation between Node's request/response objects and the pipeline's, and the socket
// bookkeeping that graceful stop needs. What the parser refuses (malformed requests, header
// blocks over the byte cap, timeouts) never reaches the pipeline and is answered here, with the
// same `x-sidecar-error` codes.
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { ERRORS, SidecarError, type ErrorCode } from '../errors.js'
import { requestIdFrom, upstreamRequestHeaders } from '../headers.js'
import { listenOn } from './listen.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Handler, ProxyRequest, ProxyResponse, RequestContext, RequestOutcome } from '../pipeline/types.js'

export interface ListenerOptions {
  host: string
  port: number
  trustForwardedHeaders: boolean
  headersTimeoutMs: number
  receiveTimeoutMs: number
  keepAliveTimeoutMs: number
  maxHeaderBytes: number
}

interface SocketMarks {
  read: number
  written: number
}

export class Listener {
  readonly server: http.Server
  private readonly marks = new WeakMap<Socket, SocketMarks>()
  private inFlight = 0
  private closing = false
  private drained: (() => void) | null = null

  constructor(
    private readonly opts: ListenerOptions,
    private readonly handler: Handler,
    private readonly deps: { logger: Logger; metrics: Metrics },
  ) {
    this.server = http.createServer(
      {
        headersTimeout: opts.headersTimeoutMs,
        requestTimeout: opts.receiveTimeoutMs,
        maxHeaderSize: opts.maxHeaderBytes,
        // how often Node checks the two timeouts above; its default (30 s) lets them overrun
        connectionsCheckingInterval: Math.min(1000, opts.headersTimeoutMs),
      },
      (req, res) => this.onRequest(req, res),
    )
    this.server.keepAliveTimeout = opts.keepAliveTimeoutMs
    // Node would silently drop headers past its count (Host among them); take them all (the
    // header block is bounded by maxHeaderSize) and let the limits layer answer 431.
    this.server.maxHeadersCount = 0
    this.server.on('connection', (socket: Socket) => {
      deps.metrics.openConnections.inc()
      this.marks.set(socket, { read: 0, written: 0 })
      socket.once('close', () => deps.metrics.openConnections.dec())
    })
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.onClientError(err, socket))
  }

  listen(): Promise<AddressInfo> {
    return listenOn(this.server, this.opts.host, this.opts.port)
  }

  /**
   * Graceful stop: no new connections, idle keep-alive connections closed, in-flight requests
   * finish (their responses say `Connection: close`) for up to `timeoutMs`, then whatever is
   * left is cut. Resolves with the number of requests that were cut.
   */
  async close(timeoutMs: number): Promise<number> {
    this.closing = true
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    if (this.inFlight > 0) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        new Promise<void>((resolve) => (this.drained = resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
      ])
      clearTimeout(timer)
    }
    const cut = this.inFlight
    this.server.closeAllConnections()
    await stopped
    return cut
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const startedAt = process.hrtime.bigint()
    const socket = req.socket
    const abort = new AbortController()
    const id = requestIdFrom(req.headers['x-request-id'])
    const clientAddress = stripV4Mapped(socket.remoteAddress ?? '')
    const ctx: RequestContext = {
      id,
      clientAddress,
      protocol: 'http',
      startedAt,
      signal: abort.signal,
      backend: undefined,
      error: undefined,
      onEnd: [],
    }
    this.inFlight++
    res.once('close', () => {
      const complete = res.writableFinished
      if (!complete) {
        ctx.error ??= 'client_closed'
        abort.abort(new SidecarError('client_closed'))
      }
      this.inFlight--
      this.finish(ctx, socket, {
        status: res.headersSent ? res.statusCode : ERRORS.client_closed.status,
        complete,
        durationSeconds: Number(process.hrtime.bigint() - startedAt) / 1e9,
      })
      if (this.closing) {
        this.server.closeIdleConnections()
        if (this.inFlight === 0) this.drained?.()
      }
    })

    const cl = req.headers['content-length']
    const hasBody = req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0')
    const proxyReq: ProxyRequest = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      headers: upstreamRequestHeaders(req.headers, id, {
        clientAddress,
        protocol: 'http',
        trustForwardedHeaders: this.opts.trustForwardedHeaders,
      }),
      body: hasBody ? req : null,
      contentLength: cl !== undefined && req.headers['transfer-encoding'] === undefined ? Number(cl) : null,
      headerCount: req.rawHeaders.length / 2,
    }
    this.handler(proxyReq, ctx).then(
      (response) => this.respond(res, response, ctx),
      (err: unknown) => {
        // The respond layer turns every error into a response; reaching here is a bug.
        this.deps.logger.error({ err, requestId: id }, 'pipeline rejected')
        res.destroy()
      },
    )
  }

  private respond(res: http.ServerResponse, response: ProxyResponse, ctx: RequestContext): void {
    const body = response.body
    if (res.destroyed) {
      // The client left while the pipeline worked: release the upstream body. Destroying it may
      // emit 'error'; with no listener that would crash the process.
      if (body !== null && !Buffer.isBuffer(body)) body.on('error', noop).destroy()
      return
    }
    response.headers['x-request-id'] = ctx.id
    if (this.closing) response.headers.connection = 'close'
    res.writeHead(response.status, response.headers)
    if (body === null || Buffer.isBuffer(body)) {
      res.end(body)
    } else {
      // Not stream.pipeline: it makes and aborts an AbortController per call, a measurable
      // share of the per-request cost. An upstream failure mid-body destroys `res` and with it
      // the connection, so the client sees a truncated response, never a short "complete" one.
      // A client gone mid-body releases the upstream body.
      body.once('error', (err) => res.destroy(err))
      res.once('close', () => {
        if (!body.readableEnded) body.on('error', noop).destroy()
      })
      body.pipe(res)
    }
  }

  private finish(ctx: RequestContext, socket: Socket, o: Omit<RequestOutcome, 'bytesIn' | 'bytesOut'>): void {
    const marks = this.marks.get(socket) ?? { read: 0, written: 0 }
    const outcome: RequestOutcome = {
      ...o,
      bytesIn: socket.bytesRead - marks.read,
      bytesOut: socket.bytesWritten - marks.written,
    }
    marks.read = socket.bytesRead
    marks.written = socket.bytesWritten
    for (const fn of ctx.onEnd) {
      try {
        fn(outcome)
      } catch (err) {
        this.deps.logger.error({ err, requestId: ctx.id }, 'request end hook failed')
      }
    }
  }

  /** Requests Node's parser refused: answer with the catalogue code, then close. */
  private onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const code = clientErrorCode(err)
    const inResponse = (socket as Socket & { _httpMessage?: http.ServerResponse })._httpMessage?.headersSent
    if (err.code === 'ECONNRESET' || !socket.writable || inResponse) {
      socket.destroy()
      return
    }
    this.deps.metrics.rejected.labels(code).inc()
    this.deps.logger.warn({ error: code, reason: err.code, client: stripV4Mapped(socket.remoteAddress ?? '') }, 'request refused by the parser')
    const body = JSON.stringify({ error: code, message: ERRORS[code].message }) + '\n'
    socket.end(
      `HTTP/1.1 ${ERRORS[code].status} ${http.STATUS_CODES[ERRORS[code].status]}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `x-sidecar-error: ${code}\r\nconnection: close\r\n\r\n${body}`,
    )
  }
}

function clientErrorCode(err: NodeJS.ErrnoException): ErrorCode {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 'headers_too_large'
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 'request_timeout'
    default:
      return 'bad_request'
  }
}

function noop(): void {}

function stripV4Mapped(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address
}
