// What a filter is, how filters stack, and the pieces most of them share:
// forwarding to the target below, and an IO whose passthrough the filter
// can wait on.
import { UblkError } from '../errors.js'
import { checkMirror, checkPassthrough, type BackingFile, type Io, type IoOp, type ReadErrorHandler, type Target, type TargetContext, type WriteErrorHandler } from '../target.js'

/**
 * A layer between the device and a target (nbdkit's filters): it sees
 * every IO on its way down and may delay, fail, count, log, move or
 * redirect it before (or instead of) handing it to the target below.
 */
export interface Filter {
  /** Shown in the device's target name, e.g. `delay`. */
  readonly name: string
  /** The target as seen through this filter; `next` is the target below. */
  wrap(next: Target): Target
}

/**
 * Stacks `filters` over `target`. The first filter is the outermost one: it
 * sees each IO first, as with nbdkit's `--filter` order.
 */
export function withFilters(target: Target, filters: readonly Filter[]): Target {
  return filters.reduceRight((below, filter) => filter.wrap(below), target)
}

export type IoMethod = (io: Io) => Promise<void> | void
export const IO_OPS = ['read', 'write', 'flush', 'discard', 'writeZeroes'] as const satisfies readonly IoOp[]

/** The method of `target` that serves `op`, bound to it. */
export function methodOf(target: Target, op: IoOp): IoMethod | undefined {
  const method = target[op]
  return method && ((io: Io) => method.call(target, io))
}

/**
 * Hands a target's context down with read routes turned off: a routed read
 * would be served on the queue thread and never reach the filter. The
 * target below then gets every read through its `read` method, as it does
 * after `routeReads(undefined)`.
 */
export function unroutedContext(ctx: TargetContext, size = ctx.size): TargetContext {
  return {
    size,
    openFile: (path, options) => ctx.openFile(path, options),
    allocBuffer: (bytes) => ctx.allocBuffer(bytes),
    read: (file, buffer, fileOffset, options) => ctx.read(file, buffer, fileOffset, options),
    write: (file, buffer, fileOffset, options) => ctx.write(file, buffer, fileOffset, options),
    fdatasync: (file, queue) => ctx.fdatasync(file, queue),
    sleep: (ms, queue) => ctx.sleep(ms, queue),
    routeReads: () => ctx.routeReads(undefined),
    routedReads: () => 0,
    routeWrites: () => ctx.routeWrites(undefined),
    routedWrites: () => 0,
    // With no write route below a filter, an open chunk changes nothing.
    writeGate: (chunkBytes) => ctx.writeGate(chunkBytes),
  }
}

/**
 * A target that forwards everything to `next`, with the IO methods it has
 * replaced by `around(op, io, call)`, where `call` runs the method below
 * and settles when that IO's work there is done (a passthrough included).
 * Read routes are turned off below it, so every IO passes the filter.
 */
export function aroundEachIo(
  name: string,
  next: Target,
  around: (op: IoOp, io: Io, call: () => Promise<void>) => Promise<void>,
): Target {
  const target: Target = {
    name: `${name}(${next.name ?? 'typescript'})`,
    fua: next.fua,
    zeroCopy: next.zeroCopy,
    open: (ctx) => next.open?.(unroutedContext(ctx)),
    close: () => next.close?.(),
    read: () => undefined,
  }
  for (const op of IO_OPS) {
    const method = methodOf(next, op)
    if (method) target[op] = (io: Io) => around(op, io, () => runAwaited(method, io))
    else delete target[op]
  }
  forwardBatchHooks(target, next, awaitableIo)
  return target
}

/**
 * Hands the batch hooks down with each IO as `mapIo` makes it for the
 * target below, and the same array to both hooks of a batch (a target may
 * key its state on it, as the RAID1 target does).
 */
export function forwardBatchHooks(target: Target, next: Target, mapIo: (io: Io) => Io): void {
  const batches = new WeakMap<readonly Io[], Io[]>()
  const mapped = (ios: readonly Io[]): Io[] => {
    let below = batches.get(ios)
    if (!below) {
      below = ios.map(mapIo)
      batches.set(ios, below)
    }
    return below
  }
  if (next.beforeWrites) target.beforeWrites = (ios) => next.beforeWrites!(mapped(ios))
  if (next.afterWrites) target.afterWrites = (ios) => next.afterWrites!(mapped(ios))
}

/**
 * Runs `method` on an IO whose passthrough is carried out as an awaited
 * read or write, so the returned promise settles when the IO's data has
 * moved and fails with the transfer's error.
 */
export async function runAwaited(method: IoMethod, io: Io): Promise<void> {
  await settleAwaited(method, awaitableIo(io))
}

/**
 * Runs `method` on `io` and waits for its passthrough, if it made one.
 * Once it did, the IO's outcome is the transfer's, whatever the method
 * returns or throws after, as without a filter.
 */
export async function settleAwaited(method: IoMethod, io: Io): Promise<void> {
  try {
    await method(io)
  } catch (err) {
    if (!(io instanceof AwaitableIo && io.handedOver)) throw err
  }
  await pendingOf(io)
}

const awaitables = new WeakMap<Io, AwaitableIo>()

/**
 * The IO as the target below a filter sees it: the same object for the
 * batch hooks and the method (a target may key its state on it).
 */
export function awaitableIo(io: Io): Io {
  if (io instanceof AwaitableIo) return io
  let wrapped = awaitables.get(io)
  if (!wrapped) {
    wrapped = new AwaitableIo(io)
    awaitables.set(io, wrapped)
  }
  return wrapped
}

function pendingOf(io: Io): Promise<void> {
  return io instanceof AwaitableIo ? io.pending : Promise.resolve()
}

/**
 * An IO that delegates to the one from the kernel, but whose `passthrough`
 * is a `readFrom`/`writeTo` the filter waits for: the queue thread would
 * otherwise complete the IO behind the filter's back. A filter that moves
 * the IO (offset) or fills part of it itself (cow) builds on this.
 */
export class AwaitableIo implements Io {
  pending: Promise<void> = Promise.resolve()
  /** The target below made a passthrough: the IO's outcome is the transfer's. */
  handedOver = false

  constructor(
    readonly inner: Io,
    readonly offset = inner.offset,
  ) {}

  get op(): IoOp {
    return this.inner.op
  }
  get length(): number {
    return this.inner.length
  }
  get fua(): boolean {
    return this.inner.fua
  }
  get queue(): number {
    return this.inner.queue
  }
  get buffer(): Uint8Array {
    return this.inner.buffer
  }
  get signal(): AbortSignal {
    return this.inner.signal
  }
  get failedRead(): Io['failedRead'] {
    return this.inner.failedRead
  }
  get failedWrite(): Io['failedWrite'] {
    return this.inner.failedWrite
  }

  passthrough(file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void {
    checkPassthrough(this.op)
    if (this.handedOver) throw new UblkError('EINVAL', 'passthrough needs a read or write that is still outstanding')
    this.handedOver = true
    this.pending = this.op === 'read' ? this.#read(file, fileOffset, onReadError) : this.#write(file, fileOffset)
    // Awaited by the filter once the method returns; until then a failure
    // must not count as unhandled.
    this.pending.catch(() => undefined)
  }

  async #read(file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): Promise<void> {
    try {
      const n = await this.inner.readFrom(file, fileOffset)
      if (n < this.length) {
        // Past the end of the file a passthrough reads zeroes; without a
        // buffer to fill (zero copy) the read fails, as a short transfer.
        let view: Uint8Array
        try {
          view = this.inner.buffer
        } catch {
          throw shortTransfer('read', n, this.length, file)
        }
        view.fill(0, n)
      }
    } catch (err) {
      if (!onReadError) throw err
      await onReadError(err as Error)
    }
  }

  async #write(file: BackingFile, fileOffset: number): Promise<void> {
    const n = await this.inner.writeTo(file, fileOffset, 0, this.length, { dsync: this.fua })
    if (n !== this.length) throw shortTransfer('write', n, this.length, file)
  }

  mirror(files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): void {
    checkMirror(this.op, files)
    if (this.handedOver) throw new UblkError('EINVAL', 'mirror needs a write that is still outstanding')
    this.handedOver = true
    this.pending = this.#mirror(files, fileOffset, onWriteError)
    this.pending.catch(() => undefined)
  }

  async #mirror(files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): Promise<void> {
    const outcomes = await Promise.allSettled(files.map((file) => this.#write(file, fileOffset)))
    const failures = outcomes.flatMap((o, i) => (o.status === 'rejected' ? [{ file: files[i]!, error: o.reason as Error }] : []))
    if (failures.length === 0) return
    if (!onWriteError) throw failures[0]!.error
    await onWriteError(failures)
  }

  readFrom(file: BackingFile, fileOffset: number, bufOffset?: number, length?: number): Promise<number> {
    return this.inner.readFrom(file, fileOffset, bufOffset, length)
  }
  writeTo(file: BackingFile, fileOffset: number, bufOffset?: number, length?: number, options?: { dsync?: boolean }): Promise<number> {
    return this.inner.writeTo(file, fileOffset, bufOffset, length, options)
  }
  fsync(file: BackingFile): Promise<void> {
    return this.inner.fsync(file)
  }
  fdatasync(file: BackingFile): Promise<void> {
    return this.inner.fdatasync(file)
  }
  fallocate(file: BackingFile, mode: number, offset: number, length: number): Promise<void> {
    return this.inner.fallocate(file, mode, offset, length)
  }
  sleep(ms: number): Promise<void> {
    return this.inner.sleep(ms)
  }
}

/** A read or write that moved fewer bytes than asked: EIO, as the queue thread answers it. */
export function shortTransfer(what: string, moved: number, wanted: number, file: BackingFile): UblkError {
  return new UblkError('EIO', `${what} of ${file.path}: ${moved} of ${wanted} bytes`)
}
