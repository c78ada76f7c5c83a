export { formatSeconds, formatStats, latencyQuantile } from './format.js'
export { metricsRegistry, type StatsSource, type StatsSources } from './prometheus.js'
export { parseMetricsPort, startMetricsServer, type MetricsServer, type MetricsServerOptions } from './server.js'
export { deviceStats, latencyBucketBounds, OPS, type DeviceStats, type DispatchStats, type OpStats, type QueueStats, type StatsOp } from './stats.js'
