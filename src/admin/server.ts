// The admin port (loopback by default): probes for the kubelet and the Prometheus scrape.
//   GET /         the status page (page.ts): draws GET /status every 2 s
//   GET /live     200 while the event loop answers at all
//   GET /started  200 once the proxy's own listener is bound (the app starts after the sidecar)
//   GET /ready    200 when no readiness latch is held (listener bound, every backend with
//                 weight > 0 healthy, not draining); 503 with a JSON body naming what holds it
//   GET /metrics  Prometheus text format (OpenMetrics, with exemplars, when asked for)
//   GET /config   the config in force (defaults filled in) and its version
//   GET /status   each backend's weight, health, breaker, in-flight and recent share; readiness;
//                 retries and rejections in the last minute
//   POST /drain         drain (readiness fails, drain.delayMs of service, then stop) and exit
//   POST /quitquitquit  stop now, gracefully, and exit: for a Job whose app has finished
// The two POSTs are answered only for clients on loopback: the admin port may be bound wider
// for the kubelet's probes, and nobody else may stop the pod's proxy. Nor may a web page: a tab
// open anywhere can POST to 127.0.0.1 (the status page invites browsers here, port-forwards
// arrive from loopback), so a POST a browser marks as coming from a page is refused too.
// curl, the kubelet and `sidecar-proxy await` send neither Origin nor Sec-Fetch-Site.
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from '../log.js'
import { listenOn } from '../server/listen.js'
import type { BackendHealth } from '../upstream/health.js'
import { PAGE, PAGE_HEADERS } from './page.js'
import type { Readiness } from './readiness.js'

export interface AdminDeps {
  readiness: Readiness
  /** The Prometheus scrape, in the format `accept` (the scraper's Accept header) asks for. */
  metrics: (accept: string | undefined) => Promise<{ contentType: string; text: string }>
  logger: Logger
  /** Each backend's health, shown by /ready. */
  backends: () => Record<string, BackendHealth | undefined>
  /** GET /config and GET /status bodies. */
  config: () => unknown
  status: () => unknown
  /** POST /drain (immediate: false) and POST /quitquitquit (immediate: true). */
  requestStop: (reason: string, immediate: boolean) => void
}

export class AdminServer {
  readonly server: http.Server

  constructor(
    private readonly address: { host: string; port: number },
    private readonly deps: AdminDeps,
  ) {
    this.server = http.createServer({ headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
      this.route(req, res).catch((err: unknown) => {
        deps.logger.error({ err, path: req.url }, 'admin request failed')
        if (!res.headersSent) send(res, 500, { error: 'internal' })
        else res.destroy()
      })
    })
  }

  listen(): Promise<AddressInfo> {
    return listenOn(this.server, this.address.host, this.address.port, this.deps.logger, 'admin server')
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]
    const post: Record<string, () => void> = {
      '/drain': () => {
        this.deps.requestStop('POST /drain', false)
        send(res, 202, { draining: true })
      },
      '/quitquitquit': () => {
        this.deps.requestStop('POST /quitquitquit', true)
        send(res, 202, { stopping: true })
      },
    }
    const action = path === undefined ? undefined : post[path]
    if (action) {
      if (req.method !== 'POST') {
        res.setHeader('allow', 'POST')
        return send(res, 405, { error: 'method_not_allowed' })
      }
      if (!isLoopback(req.socket.remoteAddress)) return send(res, 403, { error: 'forbidden', reason: 'only from loopback' })
      if (fromWebPage(req)) return send(res, 403, { error: 'forbidden', reason: 'not from a web page' })
      return action()
    }
    const routes: Record<string, () => Promise<void> | void> = {
      '/': () => {
        res.writeHead(200, PAGE_HEADERS).end(PAGE)
      },
      '/live': () => send(res, 200, { live: true }),
      '/started': () => {
        const started = !this.deps.readiness.isHeld('listener')
        send(res, started ? 200 : 503, { started })
      },
      '/ready': () => this.ready(res),
      '/config': () => send(res, 200, this.deps.config()),
      '/status': () => send(res, 200, this.deps.status()),
      '/metrics': async () => {
        const { contentType, text } = await this.deps.metrics(req.headers.accept)
        res.writeHead(200, { 'content-type': contentType }).end(text)
      },
    }
    const handler = path === undefined ? undefined : routes[path]
    if (!handler) return send(res, 404, { error: 'not_found', paths: [...Object.keys(routes), ...Object.keys(post)] })
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      return send(res, 405, { error: 'method_not_allowed' })
    }
    await handler()
  }

  private ready(res: http.ServerResponse): void {
    const holding = this.deps.readiness.holding()
    const ready = Object.keys(holding).length === 0
    send(res, ready ? 200 : 503, { ready, holding, backends: this.deps.backends() })
  }
}

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && (address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.'))
}

/** A request a browser sent on a page's behalf (fetch, a form): it says where from. */
export function fromWebPage(req: http.IncomingMessage): boolean {
  const site = req.headers['sec-fetch-site']
  return req.headers.origin !== undefined || (site !== undefined && site !== 'none')
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(text)
}
