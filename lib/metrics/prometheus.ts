// A device's figures as Prometheus metrics (prom-client): each family reads
// the devices' counters when scraped, so nothing is counted twice and
// nothing runs between scrapes.
import { Counter, Histogram, Registry, type MetricType } from 'prom-client'

import { latencyBucketBounds, OPS, type DeviceStats, type StatsOp } from './stats.js'

/** Something with figures to expose: a `Device`, or a RAID1 array's `device`. */
export interface StatsSource {
  stats(): DeviceStats
}

/** The devices to expose, read at every scrape (a list, or a function giving one). */
export type StatsSources = Iterable<StatsSource> | (() => Iterable<StatsSource>)

type Value = { value: number; labels: Record<string, string | number>; metricName?: string }

/** Prometheus' op names: snake case. */
const OP_LABEL: Record<StatsOp, string> = {
  read: 'read',
  write: 'write',
  flush: 'flush',
  discard: 'discard',
  writeZeroes: 'write_zeroes',
  other: 'other',
}

/** The five operations always shown; `other` only once it happened. */
function shown(ios: number, op: StatsOp): boolean {
  return op !== 'other' || ios > 0
}

interface Family {
  name: string
  help: string
  labelNames: string[]
  read: () => Value[]
}

function snapshotOf(f: Family, type: 'counter' | 'histogram') {
  // prom-client's typings call the type an enum; at run time it is this string.
  return { name: f.name, help: f.help, type: type as unknown as MetricType, aggregator: 'sum' as const, collect: () => {}, values: f.read() }
}

/** A counter whose values are read from the devices at each scrape. */
class ReadCounter extends Counter<string> {
  readonly #family: Family
  constructor(family: Family) {
    super({ ...family, registers: [] })
    this.#family = family
  }
  override async get() {
    return snapshotOf(this.#family, 'counter')
  }
}

/** A histogram whose buckets are the devices' own, read at each scrape. */
class ReadHistogram extends Histogram<string> {
  readonly #family: Family
  constructor(family: Family) {
    super({ ...family, registers: [] })
    this.#family = family
  }
  override async get() {
    return snapshotOf(this.#family, 'histogram')
  }
  /** What the registry asks a histogram for its text lines. */
  async getForPromString() {
    return this.get()
  }
}

/** `le` as Prometheus writes it. */
function le(bound: number | undefined): string {
  return bound === undefined ? '+Inf' : String(bound)
}

/** The metric lines of one scrape, per family. */
export function collect(all: DeviceStats[]) {
  const ios: Value[] = []
  const bytes: Value[] = []
  const errors: Value[] = []
  const latency: Value[] = []
  const bounds = latencyBucketBounds()
  for (const s of all) {
    const device = `ublkb${s.id}`
    s.queues.forEach((q, queue) => {
      for (const op of OPS) {
        if (!shown(q[op].ios, op)) continue
        const labels = { device, queue, op: OP_LABEL[op] }
        ios.push({ value: q[op].ios, labels })
        bytes.push({ value: q[op].bytes, labels })
      }
      for (const [errno, n] of Object.entries(q.errnos)) errors.push({ value: n, labels: { device, queue, errno } })
    })
    for (const op of OPS) {
      const t = s.total[op]
      if (!shown(t.ios, op)) continue
      const labels = { device, op: OP_LABEL[op] }
      let cumulative = 0
      t.buckets.forEach((n, i) => {
        cumulative += n
        latency.push({ metricName: 'ublk_io_latency_seconds_bucket', value: cumulative, labels: { ...labels, le: le(bounds[i]) } })
      })
      latency.push({ metricName: 'ublk_io_latency_seconds_sum', value: t.latencyNs / 1e9, labels })
      latency.push({ metricName: 'ublk_io_latency_seconds_count', value: cumulative, labels })
    }
  }
  return { ios, bytes, errors, latency }
}

/** A registry exposing the figures of `sources`, read when scraped. */
export function metricsRegistry(sources: StatsSources): Registry {
  const list = () => [...(typeof sources === 'function' ? sources() : sources)].map((d) => d.stats())
  // The families of one scrape are read from one snapshot per device.
  let scrape: ReturnType<typeof collect> | undefined
  const take = <K extends keyof ReturnType<typeof collect>>(key: K) => {
    scrape ??= collect(list())
    queueMicrotask(() => (scrape = undefined))
    return scrape[key]
  }
  const registry = new Registry()
  const perQueue = ['device', 'queue', 'op']
  registry.registerMetric(new ReadCounter({ name: 'ublk_ios_total', help: 'IOs completed (failed ones included)', labelNames: perQueue, read: () => take('ios') }))
  registry.registerMetric(
    new ReadCounter({ name: 'ublk_bytes_total', help: 'Bytes of the IOs that succeeded (a discard: its range)', labelNames: perQueue, read: () => take('bytes') }),
  )
  registry.registerMetric(
    new ReadCounter({ name: 'ublk_errors_total', help: 'IOs that failed, by errno', labelNames: ['device', 'queue', 'errno'], read: () => take('errors') }),
  )
  registry.registerMetric(
    new ReadHistogram({
      name: 'ublk_io_latency_seconds',
      help: 'IO latency, from its arrival on its queue to its completion',
      labelNames: ['device', 'op'],
      read: () => take('latency'),
    }),
  )
  return registry
}
