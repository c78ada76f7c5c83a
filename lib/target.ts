// What a block device written in TypeScript implements.
import type { MessagePort } from 'node:worker_threads'
import { UblkError } from './errors.js'

/** The IO operations a target can receive. */
export type IoOp = 'read' | 'write' | 'flush' | 'discard' | 'writeZeroes'

/**
 * A file opened for backend IO on the device's queue rings, by
 * `TargetContext.openFile`. Only the device that opened it accepts it;
 * anything else given where a file is expected is refused with EBADF.
 */
export interface BackingFile {
  readonly path: string
  readonly size: number
  /** Opened with O_DIRECT (falls back to buffered IO where refused). */
  readonly direct: boolean
  readonly readOnly: boolean
  readonly blockDevice: boolean
}

/**
 * `fallocate(2)` modes the backend accepts: 0 (allocate), KEEP_SIZE,
 * PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE and ZERO_RANGE | KEEP_SIZE. Any other
 * mode is refused with EINVAL.
 */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

/** One IO from the kernel. Complete it by returning (or resolving). */
export interface Io {
  readonly op: IoOp
  /** Byte offset on the device. */
  readonly offset: number
  /** Bytes; 0 for flush. */
  readonly length: number
  /** Write with Force Unit Access: durable before it completes. */
  readonly fua: boolean
  /** Which hardware queue it came on. */
  readonly queue: number
  /**
   * Aborted when the IO is given up on: it timed out (`ioTimeoutMs`; the
   * reason is a UblkError ETIMEDOUT) or the device is stopping (ECANCELED).
   * Hand it to anything slow the target waits on (`fetch`, a timer,
   * `stream.pipeline`) so that work on an IO already answered stops too.
   */
  readonly signal: AbortSignal
  /**
   * The IO's data, no copy: fill it for a read, read it for a write. Empty
   * for other operations. Detached once the IO completes: keep a copy, not
   * the view. A target that declares `zeroCopy` has none: reading this
   * throws EOPNOTSUPP.
   */
  readonly buffer: Uint8Array
  /**
   * Hands this read or write over to be served straight from or to `file`
   * at `fileOffset`: the transfer runs on the queue's io_uring and the
   * queue thread completes the IO when it ends, with no further trip
   * through JavaScript (the fast path for loop-like targets). The handler
   * is done with the IO: `buffer` is detached at once, and what it returns
   * no longer matters. A read past the end of the file fills zeroes; a FUA
   * write is written with RWF_DSYNC; a failed transfer fails the IO with
   * its errno. Throws EINVAL for an IO that is not a read or write, or no
   * longer outstanding.
   *
   * With `onReadError` (reads only), a failed read does not fail the IO:
   * the handler is called with the error and the IO is answered by its
   * outcome instead, as if it were the method. It can serve the read from
   * elsewhere with `readFrom` (not `buffer`, which stays detached).
   */
  passthrough(file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void
  /**
   * A write's `passthrough` to several files at once (a mirror's members):
   * the queue thread writes the IO's data to each of `files` at
   * `fileOffset`, all at once, and completes the IO when every copy is
   * done, with no further trip through JavaScript. Without `onWriteError`,
   * a failed copy fails the IO with its errno. With it, a failed copy does
   * not fail the IO: once every copy is done, the handler is called with
   * the ones that failed and the IO is answered by its outcome (the mirror
   * decides whether the copies that landed are enough). Throws EINVAL for
   * an IO that is not a write or no longer outstanding, or for no files or
   * more than 64.
   */
  mirror(files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): void
  /** Reads `length` bytes of `file` at `fileOffset` into this IO's buffer at `bufOffset`. */
  readFrom(file: BackingFile, fileOffset: number, bufOffset?: number, length?: number): Promise<number>
  /**
   * Writes this IO's buffer (from `bufOffset`, `length` bytes) to `file` at
   * `fileOffset`; with `dsync`, durable before it completes (RWF_DSYNC).
   */
  writeTo(file: BackingFile, fileOffset: number, bufOffset?: number, length?: number, options?: { dsync?: boolean }): Promise<number>
  fsync(file: BackingFile): Promise<void>
  fdatasync(file: BackingFile): Promise<void>
  fallocate(file: BackingFile, mode: number, offset: number, length: number): Promise<void>
  /** Waits `ms` milliseconds on the queue's io_uring (a timeout SQE), not a JS timer. */
  sleep(ms: number): Promise<void>
  /**
   * Set on a read the device's read route (see `TargetContext.routeReads`)
   * sent to a file where it failed: the IO reaches the target only now,
   * to be served from elsewhere (with `readFrom` or `buffer`).
   */
  readonly failedRead?: FailedRead
  /**
   * Set on a write the device's write route (see
   * `TargetContext.routeWrites`) sent to its file where it failed: the IO
   * reaches the target only now, to be written elsewhere or failed.
   */
  readonly failedWrite?: FailedTransfer
}

/** Most files one write is mirrored to (`Io.mirror`). */
export const MAX_MIRROR_FILES = 64

/** What `Io.passthrough` refuses whoever serves the IO: an IO that is not a read or write (EINVAL). */
export function checkPassthrough(op: IoOp): void {
  if (op !== 'read' && op !== 'write') throw new UblkError('EINVAL', `passthrough of a ${op}: only reads and writes can be handed over`)
}

/** What `Io.mirror` refuses whoever serves the IO: not a write, no files or too many (EINVAL). */
export function checkMirror(op: IoOp, files: readonly BackingFile[]): void {
  if (op !== 'write') throw new UblkError('EINVAL', `mirror of a ${op}: only writes are mirrored`)
  if (!Array.isArray(files) || files.length === 0 || files.length > MAX_MIRROR_FILES) {
    throw new UblkError('EINVAL', `mirror needs 1 to ${MAX_MIRROR_FILES} files`)
  }
}

/** Where and how a read or write failed. */
export interface FailedTransfer {
  readonly file: BackingFile
  readonly error: Error
}

/** Where and how a routed read failed. */
export type FailedRead = FailedTransfer

/**
 * How reads are served without JavaScript: device region `r` (of
 * `stripeBytes`) is read from `files[r % files.length]` at `fileOffset`
 * plus the device offset, by the queue thread, which completes the IO
 * itself. Reads that fail there reach the target's `read` with
 * `io.failedRead` set.
 */
export interface ReadRoute {
  readonly files: readonly BackingFile[]
  /** Added to the device offset (default 0); a multiple of 512. */
  readonly fileOffset?: number
  /** A power of two of at least 4096 (default 1 MiB). */
  readonly stripeBytes?: number
}

/**
 * How writes are served without JavaScript: every write goes to `file`
 * (or to each of `files`, a mirror) at `fileOffset` plus the device
 * offset, by the queue thread, which completes the IO itself once every
 * copy landed (a FUA write with RWF_DSYNC). Writes that fail there reach
 * the target's `write` with `io.failedWrite` set (the first file that
 * failed). An ungated route is not for a target with batch hooks, which
 * must see every write; a `gated` one takes only writes to chunks open in
 * the device's write gate (`TargetContext.writeGate`).
 */
export interface WriteRoute {
  /** The one file writes go to; or `files`. */
  readonly file?: BackingFile
  /** Every write goes to each of these (1 to 64). */
  readonly files?: readonly BackingFile[]
  /** Added to the device offset (default 0); a multiple of 512. */
  readonly fileOffset?: number
  /** Take only writes whose every chunk is open in the write gate (default false). */
  readonly gated?: boolean
  /**
   * Run the writes on io_uring's worker threads instead of the queue
   * thread (`IOSQE_ASYNC`; default false), so that the copies of a
   * mirrored write run side by side on other cores. Worth it where a write
   * costs its submitter CPU (a RAM disk, the page cache, emulated
   * hardware); where the backend takes writes without blocking (a fast
   * device with O_DIRECT) it adds a hop between threads to each.
   */
  readonly offload?: boolean
}

/**
 * Which chunks of the device a gated write route may write without the
 * target: for write-intent metadata (a mirror's bitmap, a journal). Every
 * chunk starts closed: a write to it reaches the target, which records
 * the write's chunks, and once the record is durable opens them; routed
 * writes to them then go on without the target. To drop a record, or to
 * copy a chunk with no write under way, the target closes the chunk and
 * waits until no routed write is in flight there.
 */
export interface WriteGate {
  readonly chunkBytes: number
  readonly chunks: number
  /** Lets routed writes into chunks `first` to `last` (default `first`). */
  open(first: number, last?: number): void
  /** Holds routed writes off a chunk; returns how many are still in flight there. */
  close(chunk: number): number
  /** Routed writes in flight in a chunk. */
  inFlight(chunk: number): number
  /** Closes a chunk that no routed write entered since the last `takeTouched` and none is in; true once it is closed. */
  closeIfIdle(chunk: number): boolean
  /** The chunks routed writes entered since the last call, ascending. */
  takeTouched(): Uint32Array
  /** Routed writes that failed on some file so far (each reached the target, unless the device was stopping). */
  failures(): number
}

/** Called when a passthrough read failed; the IO is answered by its outcome. */
export type ReadErrorHandler = (err: Error) => Promise<void> | void

/** Called when copies of a mirrored write failed (the others landed); the IO is answered by its outcome. */
export type WriteErrorHandler = (failures: readonly FailedTransfer[]) => Promise<void> | void

/**
 * Memory for backend IO that is not an IO's data: metadata such as a
 * bitmap or a superblock, or a chunk copied during resync. Page aligned,
 * zeroed when allocated, and owned by the device's native side, so it can
 * be read and written on the queue rings like an IO's buffer.
 */
export interface StagingBuffer {
  readonly bytes: Uint8Array
  /** Gives the memory back once no request uses it. */
  free(): void
}

/** Where a backend operation outside any IO runs, and on what part of the buffer. */
export interface StagedIoOptions {
  /** The queue whose ring runs it (default 0). */
  queue?: number
  /** Offset in the staging buffer (default 0). */
  bufOffset?: number
  /** Bytes (default: the rest of the buffer). */
  length?: number
  /** Writes only: durable before it completes (RWF_DSYNC). */
  dsync?: boolean
}

/**
 * What a target gets to open its files, and to run backend IO of its own
 * (outside any IO) on the device's queue rings: metadata updates, resync.
 * Operations submitted before the device starts run once it has started.
 */
export interface TargetContext {
  /** The device's size in bytes. */
  readonly size: number
  openFile(path: string, options?: { direct?: boolean; readOnly?: boolean }): Promise<BackingFile>
  allocBuffer(size: number): StagingBuffer
  /** Reads `file` at `fileOffset` into the staging buffer; resolves with the bytes read. */
  read(file: BackingFile, buffer: StagingBuffer, fileOffset: number, options?: StagedIoOptions): Promise<number>
  /** Writes the staging buffer to `file` at `fileOffset`; resolves with the bytes written. */
  write(file: BackingFile, buffer: StagingBuffer, fileOffset: number, options?: StagedIoOptions): Promise<number>
  fdatasync(file: BackingFile, queue?: number): Promise<void>
  /** Waits on a queue's ring (an io_uring timeout). */
  sleep(ms: number, queue?: number): Promise<void>
  /**
   * Serves reads on the queue threads from now on, without calling the
   * target (see `ReadRoute`); `undefined` sends every read to the target
   * again. Takes effect for reads that arrive after it returns, so a
   * target changes the route before it answers the IO that changed its
   * state (a member found faulty). Throws EINVAL or EBADF for a bad route.
   */
  routeReads(route: ReadRoute | undefined): void
  /** Reads served by the route so far. */
  routedReads(): number
  /**
   * Serves writes on the queue threads from now on, without calling the
   * target (see `WriteRoute`); `undefined` sends every write to the target
   * again. Takes effect as `routeReads` does. Throws EINVAL for an
   * ungated route on a target with batch hooks, or EINVAL or EBADF for a
   * bad route.
   */
  routeWrites(route: WriteRoute | undefined): void
  /** Writes served by the write route so far. */
  routedWrites(): number
  /**
   * The device's write gate, in chunks of `chunkBytes` (a multiple of
   * 512), every chunk closed; once per device (EBUSY after that).
   */
  writeGate(chunkBytes: number): WriteGate
}

/**
 * A block device implementation. `read` is required; a target without
 * `write` is read-only; `flush`, `discard` and `writeZeroes` are advertised
 * to the kernel only when present. A throw or rejection fails the IO with
 * EIO, or with the errno named by the error's `code` (e.g. 'ENOSPC').
 */
export interface Target {
  /** Shown as the device's target kind. */
  readonly name?: string
  /** Called once before the device starts, e.g. to open backing files. */
  open?(ctx: TargetContext): Promise<void> | void
  read(io: Io): Promise<void> | void
  write?(io: Io): Promise<void> | void
  flush?(io: Io): Promise<void> | void
  discard?(io: Io): Promise<void> | void
  writeZeroes?(io: Io): Promise<void> | void
  /**
   * Batch prologue: called with every write, discard and write-zeroes of a
   * batch (the IOs one reap of a queue's ring produced) before any of them
   * reaches its method; they wait until it resolves, and fail with its
   * errno if it rejects. For write-ahead metadata: mark all of them, then
   * flush the marks once for the whole batch.
   */
  beforeWrites?(ios: readonly Io[]): Promise<void> | void
  /** Batch epilogue: called once every IO given to `beforeWrites` completed, whatever the outcome. */
  afterWrites?(ios: readonly Io[]): Promise<void> | void
  /** Honour FUA on writes (the kernel then sends it instead of a flush). */
  readonly fua?: boolean
  /**
   * The target never reads or writes `io.buffer`: its data moves only by
   * `passthrough`, `readFrom`/`writeTo`, read routes and staged IO. No
   * buffer is then handed to JavaScript, and where the kernel has
   * `UBLK_F_AUTO_BUF_REG` the data never enters user space at all (see
   * `DeviceOptions.zeroCopy`).
   */
  readonly zeroCopy?: boolean
  /**
   * Called after the device stopped, or after it was handed over to
   * another process (`device.handOver()`, `how: 'handed-over'`): then the
   * device lives on, and the target leaves its state for the next server
   * as it is (a RAID1 does not record a clean stop). No other process
   * takes the device over before this returns.
   */
  close?(how?: CloseReason): Promise<void> | void
}

/**
 * A target's instance on the thread that runs the device, when its queues
 * are served by workers with instances of their own (see
 * `TargetModule.primary`): it serves queue 0 and keeps what the queues share.
 */
export interface PrimaryTarget extends Target {
  /** Called for each worker before any instance opens: this side of its channel to the instance of `queue`. */
  connectQueue(queue: number, port: MessagePort): void
}

/** Why a target is closed: its device stopped, or went to another process. */
export type CloseReason = 'stopped' | 'handed-over'
