// GET /status: what an operator asks of a canary rollout. Each backend with its weight (and the
// share of traffic that weight means), health, breaker state, attempts in flight and the share
// of requests it actually answered in the last minute; retries and refusals in the last minute;
// the config version in force; readiness. The admin page (page.ts) draws this.
// Assembled from the live objects on every call: nothing here is cached.
import type { InForce } from '../config/reload.js'
import type { ClientsStatus } from '../server/listener.js'
import { gatesReadiness, routeSetting } from '../config/settings.js'
import type { BackendSnapshot } from '../upstream/backends.js'
import type { TracingStatus } from '../tracing/tracer.js'
import type { RecentRequests } from './recent.js'

export interface StatusSources extends InForce {
  holding: Record<string, string>
  backend: (name: string) => BackendSnapshot | undefined
  recent: RecentRequests
  /** Upgraded connections (WebSocket) open now. */
  tunnels: number
  /** Client connections open on the listener, and by state. */
  connections: number
  connectionStates?: Record<string, number> | undefined
  /** The per-client limits and who they count (server/client-identity.ts). */
  clients?: ClientsStatus | undefined
  /** Since start: connections and exchanges evicted to make room, per resource and reason. */
  evictions?: Record<string, Record<string, number>> | undefined
  certificate: { subject: string; notAfter: Date } | undefined
  /** Tracing's export, when tracing is on. */
  tracing?: TracingStatus | undefined
  /** Since start: injected faults per route and kind, mirrored copies per backend and result. */
  totals?: { faults: Record<string, Record<string, number>>; mirror: Record<string, Record<string, number>> }
}

export function statusOf(s: StatusSources) {
  const totalWeight = s.config.backends.reduce((sum, b) => sum + b.weight, 0)
  const lastMinute = s.recent.totals(60_000)
  const routeMinute = s.recent.routeTotals(60_000)
  const retries = s.recent.retries(60_000)
  const rejections = s.recent.rejections(60_000)
  const answered = Object.values(lastMinute).reduce((sum, c) => sum + c.requests, 0)
  const percent = (part: number, whole: number) => (whole === 0 ? 0 : Math.round((part / whole) * 1000) / 10)
  return {
    ready: Object.keys(s.holding).length === 0,
    holding: s.holding,
    config: { version: s.version, loadedAt: s.loadedAt.toISOString(), pendingRestart: s.pendingRestart },
    backends: s.config.backends.map((b) => {
      const recent = lastMinute[b.name] ?? { requests: 0, errors: 0 }
      const live = s.backend(b.name)
      return {
        name: b.name,
        url: b.url,
        weight: b.weight,
        weightPercent: percent(b.weight, totalWeight),
        gatesReadiness: gatesReadiness(b),
        health: live?.health ?? null,
        breaker: live?.breaker ?? 'closed',
        inFlight: live?.inFlight ?? { active: 0, waiting: 0 },
        /** backends[].concurrency: the limit in force, and when adaptive its phase and the
         *  latencies it follows (ms); null without a limit. */
        concurrency: live?.concurrency ?? null,
        connections: live?.connections ?? 0,
        lastMinute: { ...recent, percent: percent(recent.requests, answered) },
      }
    }),
    /** The route table in order, the default (top-level settings) last: what each matches and
     *  its requests and 5xx in the last minute. */
    routes: [...s.config.routes, { name: 'default', match: {} }].map((r) => {
      const fault = routeSetting(s.config.fault, 'fault' in r ? r.fault : undefined)
      const mirror = routeSetting(s.config.mirror, 'mirror' in r ? r.mirror : undefined)
      return {
        name: r.name,
        match: r.match,
        lastMinute: routeMinute[r.name] ?? { requests: 0, errors: 0 },
        // the route's own setting or the top level's (null: none), and what it did since start
        fault: fault === undefined ? null : { ...fault, injected: s.totals?.faults[r.name] ?? {} },
        mirror: mirror ?? null,
      }
    }),
    /** Mirrored copies since start, per shadow backend and result (sent, failed, dropped, skipped_body). */
    mirror: s.totals?.mirror ?? {},
    /** Every request of the last minute, by who answered it ("none": the proxy itself). */
    lastMinute,
    /** Requests and 5xx per 10 s over the last 5 minutes, oldest first. */
    series: s.recent.series(),
    certificate: s.certificate ? { subject: s.certificate.subject, notAfter: s.certificate.notAfter.toISOString() } : null,
    /** Retries made in the last minute, per backend of the failed try and reason (retryOn
     *  condition), and retries not made because the retry budget was spent. */
    retries: { windowSeconds: 60, total: sum(Object.values(retries.byBackend).flatMap((byReason) => Object.values(byReason))), ...retries },
    /** Client connections open, and by state: handshake (pending; on the plain port, before
     *  their first bytes), silent (no request yet), idle (between requests), busy, stalled
     *  (every exchange stalled on its client), tunnel. */
    connections: { open: s.connections, ...(s.connectionStates && { byState: s.connectionStates }) },
    /** How clients are told apart (a verified certificate, the client a trusted proxy names, the
     *  peer address), the per-client limits (null: off) and, with one on, the busiest clients. */
    clients: s.clients ?? null,
    /** Since start, per resource at its ceiling (connections, requests, buffers) and reason: who
     *  was evicted to make room (pipeline/pressure.ts). */
    evictions: s.evictions ?? {},
    tunnels: { open: s.tunnels },
    /** Requests refused before reaching a backend in the last minute, per reason (error code). */
    rejections: { windowSeconds: 60, total: sum(Object.values(rejections)), byReason: rejections },
    /** Where spans go and how their export fares since start; null with tracing off. */
    tracing: s.tracing === undefined ? null : { enabled: true, ...s.tracing },
  }
}

const sum = (ns: number[]) => ns.reduce((a, b) => a + b, 0)
