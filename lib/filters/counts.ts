// Per-operation tallies kept by the stats and log filters.
import type { IoOp } from '../target.js'
import { IO_OPS } from './filter.js'

export interface OpTally {
  ios: number
  bytes: number
  /** IOs that failed, by errno name. */
  errors: Record<string, number>
  /** Time from reaching the filter to being answered, summed over the IOs. */
  totalMs: number
  maxMs: number
}

export type Tallies = Record<IoOp, OpTally>

function emptyTally(): OpTally {
  return { ios: 0, bytes: 0, errors: {}, totalMs: 0, maxMs: 0 }
}

export class OpCounts {
  #tallies = OpCounts.#empty()
  readonly since = Date.now()

  static #empty(): Tallies {
    return Object.fromEntries(IO_OPS.map((op) => [op, emptyTally()])) as Tallies
  }

  record(op: IoOp, bytes: number, ms: number, errorCode?: string): void {
    const t = this.#tallies[op]
    t.ios += 1
    t.totalMs += ms
    if (ms > t.maxMs) t.maxMs = ms
    if (errorCode) t.errors[errorCode] = (t.errors[errorCode] ?? 0) + 1
    else t.bytes += bytes
  }

  /** A copy of the tallies so far. */
  snapshot(): Tallies {
    return structuredClone(this.#tallies)
  }

  /** The tallies so far, and a fresh start. */
  take(): Tallies {
    const taken = this.#tallies
    this.#tallies = OpCounts.#empty()
    return taken
  }
}

/** One line per operation that saw IO, e.g. `write: 512 IOs, 2.0 MiB, 0.41 ms mean, 3 ms max, errors EIO 2`. */
export function formatTallies(tallies: Tallies, seconds: number): string[] {
  const lines: string[] = []
  for (const op of IO_OPS) {
    const t = tallies[op]
    if (t.ios === 0) continue
    const errors = Object.entries(t.errors)
      .map(([code, n]) => `${code} ${n}`)
      .join(', ')
    const perSecond = seconds > 0 ? `, ${(t.ios / seconds).toFixed(1)} IOs/s, ${(t.bytes / seconds / 2 ** 20).toFixed(2)} MiB/s` : ''
    lines.push(
      `${op}: ${t.ios} IOs, ${(t.bytes / 2 ** 20).toFixed(2)} MiB${perSecond}, ` +
        `${(t.totalMs / t.ios).toFixed(2)} ms mean, ${t.maxMs.toFixed(1)} ms max` +
        (errors ? `, errors ${errors}` : ''),
    )
  }
  return lines.length > 0 ? lines : ['no IO']
}

/** Where a filter writes its lines: a function, or standard error. */
export type LineSink = (line: string) => void

export const toStderr: LineSink = (line) => {
  process.stderr.write(`${line}\n`)
}
