import { errnoNumber, UblkError } from '../errors.js'
import type { IoOp } from '../target.js'
import { aroundEachIo, IO_OPS, type Filter } from './filter.js'
import { byteOffset, nonNegative } from './options.js'

export interface ErrorOptions {
  /** The errno IOs fail with, by name (default 'EIO'). */
  errno?: string
  /** The share of the IOs it applies to that fail, 0..1 (default 1: every one). */
  rate?: number
  /** The operations it applies to (default all; with a range, flushes only if named here). */
  ops?: readonly IoOp[]
  /** Only IOs that touch bytes from here (default 0)... */
  offset?: number
  /** ...up to this many bytes on (default: to the end of the device). */
  length?: number
  /** Where the randomness comes from (default Math.random), for tests. */
  random?: () => number
}

/**
 * Fails IOs with an errno before they reach the target below: all of
 * them, a share of them at random, those of some operations, those that
 * touch a range of the device, or a mix (nbdkit's error filter). A failed
 * IO never reaches the target.
 */
export function error(options: ErrorOptions = {}): Filter {
  const errno = options.errno ?? 'EIO'
  if (!/^E[A-Z0-9]+$/.test(errno) || errnoNumber(errno) === 0) {
    throw new UblkError('EINVAL', `error: not an errno name: ${errno}`)
  }
  const rate = nonNegative('error', 'rate', options.rate) ?? 1
  if (rate > 1) throw new UblkError('EINVAL', `error: rate must be between 0 and 1, not ${rate}`)
  const ops = new Set(options.ops ?? IO_OPS)
  for (const op of ops) {
    if (!(IO_OPS as readonly string[]).includes(op)) throw new UblkError('EINVAL', `error: not an operation: ${String(op)}`)
  }
  const from = byteOffset('error', 'offset', options.offset) ?? 0
  const length = byteOffset('error', 'length', options.length)
  const to = length === undefined ? Infinity : from + length
  const random = options.random ?? Math.random

  const ranged = options.offset !== undefined || options.length !== undefined
  // A flush has no range: with one given, flushes fail only if `ops` names them.
  const flushes = ops.has('flush') && (!ranged || options.ops?.includes('flush') === true)
  const hits = (op: IoOp, offset: number, bytes: number): boolean =>
    (op === 'flush' ? flushes : ops.has(op) && offset < to && offset + bytes > from) && (rate === 1 || random() < rate)

  return {
    name: 'error',
    wrap: (next) =>
      aroundEachIo('error', next, async (op, io, call) => {
        if (hits(op, io.offset, io.length)) {
          throw new UblkError(errno, `error filter: ${op} of ${io.length} bytes at ${io.offset} failed on purpose`)
        }
        await call()
      }),
  }
}
