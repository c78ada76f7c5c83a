// Device metrics: figures (`Device.stats()`, `deviceStats(id)`), their text
// report, and a Prometheus endpoint. prom-client is loaded only once an
// endpoint starts.
import type { MetricsServer, MetricsServerOptions } from './server.js'

export { formatSeconds, formatStats, latencyQuantile } from './format.js'
export type { StatsSource, StatsSources } from './prometheus.js'
export { parseMetricsPort } from './port.js'
export type { MetricsServer, MetricsServerOptions } from './server.js'
export { deviceStats, latencyBucketBounds, OPS, type DeviceStats, type DispatchStats, type OpStats, type QueueStats, type StatsOp } from './stats.js'

/**
 * Serves `GET /metrics` (Prometheus text format) for `options.devices`
 * on 127.0.0.1 until `close()`: ublk_ios_total, ublk_bytes_total
 * {device,queue,op}, ublk_errors_total{device,queue,errno} and the
 * ublk_io_latency_seconds{device,op} histogram, read from the devices at
 * each scrape. Rejects with EINVAL for a bad port, EADDRINUSE when it is
 * taken, EACCES when it may not be used.
 */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const server = await import('./server.js')
  return server.startMetricsServer(options)
}
