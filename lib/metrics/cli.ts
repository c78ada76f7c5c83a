// `ublk-ts stats <id>`, and `--metrics <port>` for the commands that serve
// devices: the command line side of lib/metrics.
import { Option, type Command } from 'commander'

import { formatStats } from './format.js'
import { parseMetricsPort } from './port.js'
import type { MetricsServer } from './server.js'
import { deviceStats } from './stats.js'
import type { StatsSources } from './prometheus.js'

/** `ublk-ts stats <id> [--json]`: a device's figures, read from the process serving it. */
export function addStatsCommand(cli: Command, parseId: (s: string) => number): void {
  cli
    .command('stats')
    .description("a device's IO figures (IOs, bytes, errors, latency), read from the ublk-ts process serving it")
    .argument('<id>', 'device id', parseId)
    .option('--json', 'as JSON')
    .action((id: number, opts: { json?: boolean }) => {
      const s = deviceStats(id)
      console.log(opts.json ? JSON.stringify(s, null, 2) : formatStats(s))
    })
}

/** `--metrics <port>`, for the commands that serve devices. */
export function metricsPortOption(): Option {
  return new Option('--metrics <port>', 'serve Prometheus metrics on http://127.0.0.1:<port>/metrics (0: any free port)').argParser(parseMetricsPort)
}

/**
 * Starts the metrics endpoint a `--metrics` option asked for (none
 * without it), and says where it listens. Started before the devices
 * are, so a port in use fails before anything is created: `devices` is
 * read at each scrape (an array the caller adds to will do).
 */
export async function serveMetrics(port: number | undefined, devices: StatsSources): Promise<MetricsServer | undefined> {
  if (port === undefined) return undefined
  // Loaded only here: every start of the CLI would pay for prom-client.
  const { startMetricsServer } = await import('./server.js')
  const server = await startMetricsServer({ port, devices })
  console.log(`metrics on ${server.url}`)
  return server
}
