// Metrics without a device: formatting, the Prometheus text, option checks.
import { createServer } from 'node:net'

import test from 'ava'

import { UblkError } from '../lib/index.ts'
import { formatSeconds, formatStats, latencyQuantile } from '../lib/metrics/format.ts'
import { collect } from '../lib/metrics/prometheus.ts'
import { parseMetricsPort } from '../lib/metrics/port.ts'
import { startMetricsServer } from '../lib/metrics/server.ts'
import { deviceStats, latencyBucketBounds, OPS, type DeviceStats, type OpStats, type QueueStats } from '../lib/metrics/stats.ts'
import { ublkTs } from './helpers/cli.ts'
import { rejectsWithCode } from './helpers/errors.ts'

const BUCKETS = latencyBucketBounds().length + 1

function op(ios = 0, bytes = 0, bucket = 3, errors = 0): OpStats {
  const buckets = new Array<number>(BUCKETS).fill(0)
  buckets[bucket] = ios
  return { ios, bytes, errors, latencyNs: ios * 5_000, buckets }
}

function queue(parts: Partial<QueueStats>): QueueStats {
  const q = { ios: 0, bytes: 0, errors: 0, errnos: {}, ...Object.fromEntries(OPS.map((o) => [o, op()])), ...parts } as QueueStats
  q.ios = OPS.reduce((n, o) => n + q[o].ios, 0)
  q.bytes = OPS.reduce((n, o) => n + q[o].bytes, 0)
  q.errors = OPS.reduce((n, o) => n + q[o].errors, 0)
  return q
}

/** Device 3: queue 0 wrote 5 x 4 KiB, queue 1 failed 2 reads with EIO. */
const sample: DeviceStats = {
  id: 3,
  pid: 1234,
  queues: [queue({ write: op(5, 5 * 4096) }), queue({ read: op(2, 0, 30, 2), errnos: { EIO: 2 } })],
  total: queue({ write: op(5, 5 * 4096), read: op(2, 0, 30, 2), errnos: { EIO: 2 } }),
}

test('latency buckets double from 1 µs', (t) => {
  const b = latencyBucketBounds()
  t.is(b.length, 31)
  t.is(b[0], 1e-6)
  for (let i = 1; i < b.length; i++) t.is(b[i], b[i - 1]! * 2)
})

test('quantiles are bucket bounds', (t) => {
  const bounds = latencyBucketBounds()
  const o = op(0)
  t.is(latencyQuantile(o, 0.5), undefined)
  o.buckets[2] = 99
  o.buckets[10] = 1
  o.ios = 100
  t.is(latencyQuantile(o, 0.5), bounds[2])
  t.is(latencyQuantile(o, 0.99), bounds[2])
  t.is(latencyQuantile(o, 1), bounds[10])
  o.buckets[BUCKETS - 1] = 100
  o.ios = 200
  t.is(latencyQuantile(o, 1), Infinity)
  t.is(formatSeconds(4e-6), '4µs')
  t.is(formatSeconds(0.0015), '1.5ms')
  t.is(formatSeconds(750e-9), '750ns')
  t.is(formatSeconds(Infinity), 'slower')
})

test('the text report has totals, every queue, and errors by errno', (t) => {
  const text = formatStats(sample)
  t.regex(text, /^\/dev\/ublkb3, served by pid 1234/)
  t.regex(text, /total: 7 IOs, 20K, 2 errors/)
  t.regex(text, /write\s+5\s+20K\s+0 {2}mean 5µs, p50 < 8µs, p99 < 8µs/)
  t.regex(text, /queue 1: 2 IOs, 0B, 2 errors/)
  t.regex(text, /errors by errno: EIO 2/)
  t.notRegex(text, /\bother\b/, 'no other op happened')
})

test('Prometheus families: counters per queue and op, errors per errno, a cumulative histogram per op', (t) => {
  const m = collect([sample])
  t.deepEqual(
    m.ios.find((v) => v.labels.queue === 0 && v.labels.op === 'write'),
    { value: 5, labels: { device: 'ublkb3', queue: 0, op: 'write' } },
  )
  t.is(m.ios.length, 2 * 5, 'five ops per queue, no "other"')
  t.true(m.ios.some((v) => v.labels.op === 'write_zeroes'))
  t.deepEqual(m.errors, [{ value: 2, labels: { device: 'ublkb3', queue: 1, errno: 'EIO' } }])
  const reads = m.latency.filter((v) => v.labels.op === 'read')
  t.is(reads.length, BUCKETS + 2)
  const inf = reads.find((v) => v.labels.le === '+Inf')!
  t.is(inf.value, 2)
  t.is(reads.find((v) => v.labels.le === '0.000001')!.value, 0)
  t.deepEqual(reads.at(-1), { metricName: 'ublk_io_latency_seconds_count', value: 2, labels: { device: 'ublkb3', op: 'read' } })
  t.is(reads.at(-2)!.value, 10e-6, 'sum in seconds')
})

test('the metrics endpoint serves the text format on 127.0.0.1, read at every scrape', async (t) => {
  let stats = sample
  const server = await startMetricsServer({ port: 0, devices: () => [{ stats: () => stats }] })
  t.teardown(() => server.close())
  t.regex(server.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/)
  const res = await fetch(server.url)
  t.is(res.status, 200)
  t.regex(res.headers.get('content-type') ?? '', /^text\/plain/)
  const text = await res.text()
  t.regex(text, /# TYPE ublk_ios_total counter/)
  t.regex(text, /^ublk_ios_total\{device="ublkb3",queue="0",op="write"\} 5$/m)
  t.regex(text, /^ublk_bytes_total\{device="ublkb3",queue="0",op="write"\} 20480$/m)
  t.regex(text, /^ublk_errors_total\{device="ublkb3",queue="1",errno="EIO"\} 2$/m)
  t.regex(text, /# TYPE ublk_io_latency_seconds histogram/)
  t.regex(text, /^ublk_io_latency_seconds_bucket\{device="ublkb3",op="write",le="\+Inf"\} 5$/m)
  t.regex(text, /^ublk_io_latency_seconds_count\{device="ublkb3",op="write"\} 5$/m)
  stats = { ...sample, total: queue({ write: op(9, 9 * 4096) }), queues: [queue({ write: op(9, 9 * 4096) })] }
  t.regex(await (await fetch(server.url)).text(), /^ublk_ios_total\{device="ublkb3",queue="0",op="write"\} 9$/m)
  t.is((await fetch(server.url.replace('/metrics', '/nope'))).status, 404)
})

test('metrics ports are checked: EINVAL for bad input, EADDRINUSE for a taken one', async (t) => {
  t.is(parseMetricsPort('9100'), 9100)
  t.is(parseMetricsPort('0'), 0)
  for (const bad of ['', 'http', '-1', '65536', '1.5', '123456']) {
    const e = t.throws(() => parseMetricsPort(bad), { instanceOf: UblkError })
    t.is(e?.code, 'EINVAL')
  }
  for (const bad of [-1, 1.5, 70000, Number.NaN, '80' as unknown as number]) {
    await rejectsWithCode(t, startMetricsServer({ port: bad, devices: [] }), 'EINVAL')
  }
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => taken.close())
  const port = (taken.address() as { port: number }).port
  await rejectsWithCode(t, startMetricsServer({ port, devices: [] }), 'EADDRINUSE', new RegExp(`127\\.0\\.0\\.1:${port} is in use`))
})

test('stats of a device no ublk-ts process serves: ENODEV', async (t) => {
  const e = t.throws(() => deviceStats(4000), { instanceOf: UblkError })
  t.is(e?.code, 'ENODEV')
  t.regex(e?.message ?? '', /not served by a ublk-ts process/)
  const cli = await ublkTs('stats', '4000', '--json')
  t.is(cli.code, 1)
  t.regex(cli.stderr, /ublk device 4000 is not served by a ublk-ts process .*\(ENODEV\)/)
  const port = await ublkTs('add', 'null', '--size', '1G', '--metrics', 'http')
  t.is(port.code, 1)
  t.regex(port.stderr, /--metrics needs a TCP port 0\.\.65535, got "http" \(EINVAL\)/)
})
