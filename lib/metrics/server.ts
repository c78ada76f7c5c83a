// `--metrics <port>`: the Prometheus text format over HTTP on 127.0.0.1.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

import { UblkError } from '../errors.js'
import { checkPort } from './port.js'
import { metricsRegistry, type StatsSources } from './prometheus.js'

export interface MetricsServerOptions {
  /** TCP port, 0..65535 (0: any free one; `MetricsServer.port` says which). */
  port: number
  /** Address to listen on; default 127.0.0.1 (a scraper on this machine). */
  host?: string
  /** The devices to expose, read at every scrape. */
  devices: StatsSources
}

export interface MetricsServer {
  readonly port: number
  /** `http://host:port/metrics` */
  readonly url: string
  close(): Promise<void>
}

/**
 * Serves `GET /metrics` (Prometheus text format) for `devices` until
 * `close()`. Rejects with EINVAL for a bad port, EADDRINUSE when the port
 * is taken, EACCES when it may not be used.
 */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const port = checkPort(options?.port)
  const host = options.host ?? '127.0.0.1'
  const registry = metricsRegistry(options.devices)
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' || (path !== '/metrics' && path !== '/')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('try GET /metrics\n')
      return
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`),
    )
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? 'EIO'
      const why = code === 'EADDRINUSE' ? 'is in use' : code === 'EACCES' ? 'may not be used by this user' : `cannot be listened on: ${err.message}`
      reject(new UblkError(code, `metrics port ${host}:${port} ${why}`, { cause: err }))
    })
    server.listen(port, host, () => resolve())
  })
  // A metrics endpoint never keeps the process alive by itself.
  server.unref()
  const bound = (server.address() as AddressInfo).port
  return {
    port: bound,
    url: `http://${host}:${bound}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
