import { closeSync, openSync, writeSync } from 'node:fs'

import { UblkError } from '../errors.js'
import type { Target } from '../target.js'
import { OpCounts, formatTallies, toStderr, type LineSink } from './counts.js'
import { aroundEachIo, type Filter } from './filter.js'
import { positive } from './options.js'
import { codeOf } from './stats.js'

export interface LogOptions {
  /** Append the lines to this file (default: standard error, or `write`). */
  file?: string
  /** Where the lines go, instead of a file. */
  write?: LineSink
  /** Instead of a line per IO, one summary every this many seconds. */
  summaryEvery?: number
}

/**
 * Logs what passes (nbdkit's log filter): one line per IO when it is
 * answered, with its operation, range, outcome and time, e.g.
 * `2026-11-26T16:02:11.123Z write offset=4096 length=4096 fua=0 ok 0.31ms`;
 * or, with `summaryEvery`, the counts of each interval. A log that cannot
 * be written never fails an IO: the first such error is a process warning.
 */
export function log(options: LogOptions = {}): Filter {
  const every = positive('log', 'summaryEvery', options.summaryEvery)
  const file = options.file
  let fd: number | undefined
  let warned = false
  // Appended synchronously: a line is written before its IO is answered,
  // and none is lost when the process ends. Lines after close are dropped.
  const toFile: LineSink = (line) => {
    if (fd === undefined) return
    try {
      writeSync(fd, `${line}\n`)
    } catch (err) {
      if (!warned) process.emitWarning(`log filter: cannot write ${file}: ${(err as Error).message}`, 'UblkWarning')
      warned = true
    }
  }
  const write: LineSink = options.write ?? (file ? toFile : toStderr)
  const openFile = (): void => {
    if (!file || options.write) return
    try {
      fd = openSync(file, 'a')
    } catch (err) {
      throw new UblkError('EINVAL', `log: cannot open ${file}: ${(err as Error).message}`, { cause: err })
    }
  }
  const closeFile = (): void => {
    if (fd !== undefined) closeSync(fd)
    fd = undefined
  }
  const interval = new OpCounts()
  let timer: NodeJS.Timeout | undefined
  let intervalStart = Date.now()
  const summarize = (): void => {
    const now = Date.now()
    const seconds = (now - intervalStart) / 1000
    intervalStart = now
    const stamp = new Date(now).toISOString()
    for (const line of formatTallies(interval.take(), seconds)) write(`${stamp} ${line}`)
  }

  return {
    name: 'log',
    wrap(next): Target {
      const target = aroundEachIo('log', next, async (op, io, call) => {
        const started = performance.now()
        let outcome = 'ok'
        try {
          await call()
        } catch (err) {
          outcome = codeOf(err)
          throw err
        } finally {
          const ms = performance.now() - started
          if (every !== undefined) {
            interval.record(op, io.length, ms, outcome === 'ok' ? undefined : outcome)
          } else {
            write(
              `${new Date().toISOString()} ${op} offset=${io.offset} length=${io.length} fua=${io.fua ? 1 : 0} ` +
                `${outcome} ${ms.toFixed(2)}ms`,
            )
          }
        }
      })
      return {
        ...target,
        open(ctx) {
          openFile()
          if (every !== undefined) {
            intervalStart = Date.now()
            timer = setInterval(summarize, every * 1000).unref()
          }
          return target.open?.(ctx)
        },
        async close() {
          clearInterval(timer)
          if (every !== undefined) summarize()
          closeFile()
          await target.close?.()
        },
      }
    },
  }
}
