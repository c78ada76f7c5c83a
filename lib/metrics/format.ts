// `ublk-ts stats`: a device's figures as a few lines of text.
import { formatSize } from '../size.js'
import { latencyBucketBounds, OPS, type DeviceStats, type OpStats, type QueueStats } from './stats.js'

/**
 * The latency below which a fraction `q` (0..1) of an operation's IOs
 * completed, as the upper bound of the bucket it falls in, in seconds;
 * `Infinity` in the last bucket, undefined without IOs.
 */
export function latencyQuantile(op: OpStats, q: number, bounds: readonly number[] = latencyBucketBounds()): number | undefined {
  if (op.ios === 0) return undefined
  const want = Math.max(1, Math.ceil(op.ios * q))
  let seen = 0
  for (let i = 0; i < op.buckets.length; i++) {
    seen += op.buckets[i]!
    if (seen >= want) return bounds[i] ?? Infinity
  }
  return Infinity
}

/** Seconds as a short duration: 750ns, 12.5µs, 3.2ms, 1.5s. */
export function formatSeconds(s: number | undefined): string {
  if (s === undefined) return '-'
  if (!Number.isFinite(s)) return 'slower'
  if (s < 1e-6) return `${Math.round(s * 1e9)}ns`
  if (s < 1e-3) return `${+(s * 1e6).toPrecision(3)}µs`
  if (s < 1) return `${+(s * 1e3).toPrecision(3)}ms`
  return `${+s.toPrecision(3)}s`
}

function opLine(name: string, op: OpStats, bounds: readonly number[]): string {
  const mean = op.ios ? op.latencyNs / op.ios / 1e9 : undefined
  const p50 = latencyQuantile(op, 0.5, bounds)
  const p99 = latencyQuantile(op, 0.99, bounds)
  return (
    `  ${name.padEnd(12)} ${String(op.ios).padStart(12)} ${formatSize(op.bytes).padStart(9)} ${String(op.errors).padStart(8)}` +
    `  mean ${formatSeconds(mean)}, p50 < ${formatSeconds(p50)}, p99 < ${formatSeconds(p99)}`
  )
}

function errnoLine(q: QueueStats): string | undefined {
  const errnos = Object.entries(q.errnos)
  if (errnos.length === 0) return undefined
  return `  errors by errno: ${errnos.map(([e, n]) => `${e} ${n}`).join(', ')}`
}

function block(title: string, q: QueueStats, bounds: readonly number[]): string[] {
  const lines = [`${title}: ${q.ios} IOs, ${formatSize(q.bytes)}, ${q.errors} errors`]
  for (const name of OPS) {
    const op = q[name]
    if (op.ios > 0 || name !== 'other') lines.push(opLine(name, op, bounds))
  }
  const errnos = errnoLine(q)
  if (errnos) lines.push(errnos)
  return lines
}

/** The figures as text: the device's total, then each queue when there are several. */
export function formatStats(s: DeviceStats, bounds: readonly number[] = latencyBucketBounds()): string {
  const header = `  ${'op'.padEnd(12)} ${'IOs'.padStart(12)} ${'bytes'.padStart(9)} ${'errors'.padStart(8)}  latency (arrival to completion)`
  const lines = [`/dev/ublkb${s.id}, served by pid ${s.pid}`, header, ...block('total', s.total, bounds)]
  if (s.queues.length > 1) s.queues.forEach((q, i) => lines.push(...block(`queue ${i}`, q, bounds)))
  return lines.join('\n')
}
