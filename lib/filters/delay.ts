import type { IoOp } from '../target.js'
import { aroundEachIo, IO_OPS, type Filter } from './filter.js'
import { nonNegative } from './options.js'

export interface DelayOptions {
  /** Every operation waits this many ms, unless its own option says otherwise. */
  ms?: number
  read?: number
  write?: number
  flush?: number
  discard?: number
  writeZeroes?: number
}

/**
 * Each IO waits a fixed time before the target below sees it, on the
 * queue's io_uring (a timeout SQE, not a JS timer): a slow disk or a
 * distant server, for tests (nbdkit's delay filter).
 */
export function delay(options: DelayOptions): Filter {
  const all = nonNegative('delay', 'ms', options.ms) ?? 0
  const wait = {} as Record<IoOp, number>
  for (const op of IO_OPS) {
    wait[op] = nonNegative('delay', op, options[op]) ?? all
  }
  return {
    name: 'delay',
    wrap: (next) =>
      aroundEachIo('delay', next, async (op, io, call) => {
        if (wait[op] > 0) await io.sleep(wait[op])
        await call()
      }),
  }
}
