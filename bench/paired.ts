// The ratios the issues set bars on, each taken in rounds that run its two
// systems back to back (in turn first), so that both see the same moment
// of a test bed whose speed drifts by a third within minutes: the ratio is
// the median of the rounds' ratios, not one point against one point taken
// minutes apart in the big table.
import type { Prepared, System } from './systems.ts'

export interface Pair {
  key: string
  a: System
  b: System
  rw: 'randread' | 'randwrite'
  qd: number
  queues: number
}

export interface PairedRatio {
  key: string
  /** Median of the rounds' a/b, or null if no round measured both. */
  ratio: number | null
  rounds: Array<{ a: number; b: number }>
}

/** IOPS of one fio run of `rw` at `qd` on a device of `queues` queues. */
export type Measure = (path: string, rw: Pair['rw'], qd: number, queues: number) => Promise<number>

export async function runPaired(
  pairs: readonly Pair[],
  rounds: number,
  measure: Measure,
  log: (line: string) => void,
  failures: string[],
): Promise<PairedRatio[]> {
  const results: PairedRatio[] = []
  for (const pair of pairs) {
    const result: PairedRatio = { key: pair.key, ratio: null, rounds: [] }
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? [pair.a, pair.b] : [pair.b, pair.a]
      const iops = new Map<System, number>()
      for (const system of order) {
        let dev: Prepared | undefined
        try {
          dev = await system.prepare(pair.queues)
          iops.set(system, await measure(dev.path, pair.rw, pair.qd, pair.queues))
        } catch (err) {
          failures.push(`${pair.key} round ${round + 1}, ${system.name}: ${String(err).split('\n')[0]}`)
        } finally {
          await dev?.teardown()
        }
      }
      const a = iops.get(pair.a)
      const b = iops.get(pair.b)
      if (a === undefined || !b) continue
      result.rounds.push({ a, b })
      log(`  ${pair.key} round ${round + 1}: ${Math.round(a)} / ${Math.round(b)} IOPS = ${(a / b).toFixed(3)}`)
    }
    result.ratio = medianRatio(result.rounds)
    results.push(result)
  }
  return results
}

/** The median of the rounds' a/b, to three places; null without a round. */
export function medianRatio(rounds: ReadonlyArray<{ a: number; b: number }>): number | null {
  return rounds.length > 0 ? Number(median(rounds.map((r) => r.a / r.b)).toFixed(3)) : null
}

/** The middle value, or the mean of the two middle ones. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
