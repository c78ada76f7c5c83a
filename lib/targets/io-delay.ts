import type { Io, Target } from '../target.js'

/**
 * Wraps a target so that every IO first waits a random 0..`maxMs` ms on the
 * queue's io_uring: IOs then finish out of order, which provokes the
 * interleavings that ordering bugs (write-intent bitmaps, journals) hide in.
 * For tests and benchmarks.
 */
export function withIoDelay(target: Target, maxMs: number, random: () => number = Math.random): Target {
  const delayed =
    (method: ((io: Io) => Promise<void> | void) | undefined) =>
    method &&
    (async (io: Io): Promise<void> => {
      await io.sleep(random() * maxMs)
      await method.call(target, io)
    })
  const wrapped: Target = {
    ...target,
    name: target.name,
    zeroCopy: target.zeroCopy,
    open: target.open?.bind(target),
    close: target.close?.bind(target),
    beforeWrites: target.beforeWrites?.bind(target),
    afterWrites: target.afterWrites?.bind(target),
    read: delayed(target.read)!,
  }
  wrapped.write = delayed(target.write)
  wrapped.flush = delayed(target.flush)
  wrapped.discard = delayed(target.discard)
  wrapped.writeZeroes = delayed(target.writeZeroes)
  for (const op of ['write', 'flush', 'discard', 'writeZeroes', 'open', 'close', 'beforeWrites', 'afterWrites'] as const) {
    if (!wrapped[op]) delete wrapped[op]
  }
  return wrapped
}
