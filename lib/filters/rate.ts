import type { Io, IoOp } from '../target.js'
import { aroundEachIo, type Filter } from './filter.js'
import { positive } from './options.js'

export interface RateOptions {
  /** Data moved per second, reads and writes together (reads, writes, ...). */
  bytesPerSecond?: number
  /** IOs per second, every operation counted. */
  iops?: number
}

/**
 * Limits the device to a data rate and an IO rate (nbdkit's rate filter).
 * Each IO takes its turn in one schedule per limit: it starts once the IOs
 * before it have had the time their size allows, waiting on the queue's
 * io_uring. Bursts are not saved up: an idle second gives no credit.
 */
export function rate(options: RateOptions): Filter {
  const bytesPerSecond = positive('rate', 'bytesPerSecond', options.bytesPerSecond)
  const iops = positive('rate', 'iops', options.iops)
  const dataMoves = (op: IoOp): boolean => op === 'read' || op === 'write'
  // When the next IO may start, per limit (ms on the monotonic clock).
  let bytesFreeAt = 0
  let iosFreeAt = 0

  const turnOf = (op: IoOp, io: Io): number => {
    const now = performance.now()
    let start = now
    if (iops !== undefined) {
      iosFreeAt = Math.max(iosFreeAt, now)
      start = Math.max(start, iosFreeAt)
      iosFreeAt += 1000 / iops
    }
    if (bytesPerSecond !== undefined && dataMoves(op)) {
      bytesFreeAt = Math.max(bytesFreeAt, now)
      start = Math.max(start, bytesFreeAt)
      bytesFreeAt += (io.length * 1000) / bytesPerSecond
    }
    return start - now
  }

  return {
    name: 'rate',
    wrap: (next) =>
      aroundEachIo('rate', next, async (op, io, call) => {
        const wait = turnOf(op, io)
        if (wait >= 1) await io.sleep(wait)
        await call()
      }),
  }
}
