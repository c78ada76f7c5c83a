import type { Target } from '../target.js'
import type { Filter } from './filter.js'

/**
 * Serves the target below read-only: the device is created read-only, so
 * the kernel refuses writes, discards and write-zeroes with EROFS before
 * they reach the target (nbdkit's readonly filter). Reads keep their
 * routes: nothing in this filter needs to see them.
 */
export function readonly(): Filter {
  return {
    name: 'readonly',
    wrap(next): Target {
      return {
        name: `readonly(${next.name ?? 'typescript'})`,
        zeroCopy: next.zeroCopy,
        open: (ctx) => next.open?.(ctx),
        close: () => next.close?.(),
        read: (io) => next.read(io),
        ...(next.flush ? { flush: (io) => next.flush!(io) } : {}),
      }
    },
  }
}
