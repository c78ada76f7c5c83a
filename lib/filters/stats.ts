import { errnoCodeOf } from '../errors.js'
import type { Target } from '../target.js'
import { OpCounts, formatTallies, toStderr, type LineSink, type Tallies } from './counts.js'
import { aroundEachIo, type Filter } from './filter.js'
import { positive } from './options.js'

export interface StatsOptions {
  /** Also print the figures so far every this many seconds. */
  every?: number
  /** Where the figures go (default: standard error). */
  write?: LineSink
}

export interface StatsFilter extends Filter {
  /** IOs, bytes, errors and times per operation since the device started. */
  snapshot(): Tallies
}

/**
 * Counts what passes, per operation: IOs, bytes, errors by errno, mean and
 * longest time to answer. The figures are printed when the device stops
 * (nbdkit's stats filter), every `every` seconds if asked, and readable at
 * any time with `snapshot()`.
 */
export function stats(options: StatsOptions = {}): StatsFilter {
  const every = positive('stats', 'every', options.every)
  const write = options.write ?? toStderr
  const counts = new OpCounts()
  let timer: NodeJS.Timeout | undefined
  const print = (label: string): void => {
    const seconds = (Date.now() - counts.since) / 1000
    for (const line of formatTallies(counts.snapshot(), seconds)) write(`stats ${label}: ${line}`)
  }

  return {
    name: 'stats',
    snapshot: () => counts.snapshot(),
    wrap(next): Target {
      const target = aroundEachIo('stats', next, async (op, io, call) => {
        const started = performance.now()
        try {
          await call()
          counts.record(op, io.length, performance.now() - started)
        } catch (err) {
          counts.record(op, io.length, performance.now() - started, codeOf(err))
          throw err
        }
      })
      return {
        ...target,
        open(ctx) {
          if (every !== undefined) timer = setInterval(() => print('so far'), every * 1000).unref()
          return target.open?.(ctx)
        },
        async close() {
          clearInterval(timer)
          print('at stop')
          await target.close?.()
        },
      }
    },
  }
}

/** The errno an IO failed with, by name, as the device answers it (EIO unless the error names another). */
export function codeOf(err: unknown): string {
  return errnoCodeOf(err) ?? 'EIO'
}
