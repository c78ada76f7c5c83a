import { UblkError } from '../errors.js'
import type { Io, Target } from '../target.js'
import { AwaitableIo, forwardBatchHooks, IO_OPS, methodOf, settleAwaited, unroutedContext, type Filter } from './filter.js'
import { byteOffset } from './options.js'

export interface OffsetOptions {
  /** Where the window starts in the target below, in bytes (a multiple of 512). */
  offset: number
  /** How long the window is (default: the device's size). The device may not be larger. */
  length?: number
}

/**
 * Serves a window of the target below: byte 0 of the device is byte
 * `offset` of the target (nbdkit's offset filter; with a partition's start
 * and length, a partition of a disk image). The target below sees the
 * device as `offset` + the window long.
 */
export function offset(options: OffsetOptions): Filter {
  const start = byteOffset('offset', 'offset', options.offset)
  if (start === undefined) throw new UblkError('EINVAL', 'offset: offset is required')
  const length = byteOffset('offset', 'length', options.length)

  return {
    name: 'offset',
    wrap(next): Target {
      const moved = new WeakMap<Io, AwaitableIo>()
      const move = (io: Io): AwaitableIo => {
        let shifted = moved.get(io)
        if (!shifted) {
          shifted = new AwaitableIo(io, io.offset + start)
          moved.set(io, shifted)
        }
        return shifted
      }
      const target: Target = {
        name: `offset(${next.name ?? 'typescript'})`,
        fua: next.fua,
        zeroCopy: next.zeroCopy,
        open(ctx) {
          if (length !== undefined && ctx.size > length) {
            throw new UblkError('EINVAL', `offset: the device (${ctx.size} bytes) is larger than the window (${length} bytes)`)
          }
          return next.open?.(unroutedContext(ctx, start + (length ?? ctx.size)))
        },
        close: () => next.close?.(),
        read: () => undefined,
      }
      for (const op of IO_OPS) {
        const method = methodOf(next, op)
        if (!method) {
          delete target[op]
          continue
        }
        target[op] = (io: Io) => settleAwaited(method, move(io))
      }
      forwardBatchHooks(target, next, move)
      return target
    },
  }
}
