// Runs a TypeScript target: turns each batch from a queue thread into
// calls of the target's methods, and sends results and backend requests
// back in one native call per tick.
import { constants } from 'node:os'

import { UblkError } from './errors.js'
import type { BackingFile, FailedRead, Io, IoOp, ReadErrorHandler, StagingBuffer, Target } from './target.js'

import type { NativeBridge } from '../index.js'

const ERRNO = constants.errno as Record<string, number | undefined>
const EIO = ERRNO.EIO ?? 5
const ETIMEDOUT = ERRNO.ETIMEDOUT ?? 110
const EOPNOTSUPP = ERRNO.EOPNOTSUPP ?? 95
const ECANCELED = ERRNO.ECANCELED ?? 125

/** `UBLK_IO_OP_*` codes as the kernel sends them. */
const OP_BY_CODE: Array<IoOp | undefined> = ['read', 'write', 'flush', 'discard', undefined, 'writeZeroes']
/** `UBLK_IO_F_FUA` (bit 13 of op_flags), after the op byte is shifted out. */
const FLAG_FUA = 1 << 5

/** Floats per entry in the native tables (see crates/ublk-node/src/bridge.rs). */
const IO_FIELDS = 8
const REQUEST_FIELDS = 9
const BACKEND_RESULT_FIELDS = 2

export const enum BackendKind {
  Read = 0,
  Write = 1,
  Fsync = 2,
  Fdatasync = 3,
  Fallocate = 4,
  Sleep = 5,
}
/** Sleeps are capped so the microseconds fit the request's length field. */
const MAX_SLEEP_MS = 60_000
/** Bit in the request kind: the queue thread completes the IO when done. */
const COMPLETES_IO = 0x100
/** With COMPLETES_IO: a failed read is reported back instead. */
const REPORT_FAILURE = 0x200
/** Bit in the request kind: the tag field names a staging buffer. */
const STAGING = 0x400
const RWF_DSYNC = 0x2

const EMPTY = new Uint8Array(0)
/** Stands in for the file of requests that have none (sleep). */
const NO_FILE: BackingFile = { path: '(none)', size: 0, direct: false, readOnly: true, blockDevice: false, index: 0 }

/** The errno (positive) an error from a target stands for. */
export function errnoOf(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string') {
    const n = ERRNO[code]
    if (n !== undefined) return n
  }
  return EIO
}

function backendError(result: number, what: string): UblkError {
  const errno = -result
  const code = Object.keys(ERRNO).find((k) => ERRNO[k] === errno) ?? 'EIO'
  return new UblkError(code, `${what} failed: ${code}`)
}

interface Outstanding {
  seq: number
  buffer: ArrayBuffer | null
  deadline: number
  /** Handed to the queue thread, which completes it (see `passthrough`). */
  native: boolean
  /** The id a failed passthrough read is reported under. */
  fallbackId?: number
}

/** An IO recorded and ready for its method. */
interface Admitted {
  io: IoRequest
  entry: Outstanding
  handler: (io: Io) => Promise<void> | void
  success: number
}

/** Operations that change data: the ones the batch hooks see. */
const MODIFIES = new Set<IoOp>(['write', 'discard', 'writeZeroes'])

interface PendingBackend {
  resolve(result: number): void
  reject(err: Error): void
  what: string
}

class QueueOutbox {
  results: number[] = []
  requests: number[] = []
  detach: Array<ArrayBuffer | null> = []
  /** A batch was taken in since the last post: the queue may send the next. */
  batchTaken = false

  get empty(): boolean {
    return this.results.length === 0 && this.requests.length === 0 && this.detach.length === 0 && !this.batchTaken
  }
}

class IoRequest implements Io {
  readonly buffer: Uint8Array
  failedRead?: FailedRead

  constructor(
    private readonly dispatcher: Dispatcher,
    readonly queue: number,
    readonly tag: number,
    /** @internal the dispatcher's record of this IO */
    readonly entry: Outstanding,
    readonly op: IoOp,
    readonly offset: number,
    readonly length: number,
    readonly fua: boolean,
    data: ArrayBuffer | null,
  ) {
    this.buffer = data ? new Uint8Array(data) : EMPTY
  }

  passthrough(file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void {
    this.dispatcher.passthrough(this, file, fileOffset, onReadError)
  }

  readFrom(file: BackingFile, fileOffset: number, bufOffset = 0, length = this.length - bufOffset): Promise<number> {
    return this.dispatcher.backend(this.queue, BackendKind.Read, 0, file, this.tag, this.entry.seq, bufOffset, length, fileOffset, 'read')
  }

  writeTo(
    file: BackingFile,
    fileOffset: number,
    bufOffset = 0,
    length = this.length - bufOffset,
    options: { dsync?: boolean } = {},
  ): Promise<number> {
    const flags = options.dsync ? RWF_DSYNC : 0
    return this.dispatcher.backend(this.queue, BackendKind.Write, flags, file, this.tag, this.entry.seq, bufOffset, length, fileOffset, 'write')
  }

  async fsync(file: BackingFile): Promise<void> {
    await this.dispatcher.backend(this.queue, BackendKind.Fsync, 0, file, this.tag, this.entry.seq, 0, 0, 0, 'fsync')
  }

  async fdatasync(file: BackingFile): Promise<void> {
    await this.dispatcher.backend(this.queue, BackendKind.Fdatasync, 0, file, this.tag, this.entry.seq, 0, 0, 0, 'fdatasync')
  }

  sleep(ms: number): Promise<void> {
    return this.dispatcher.sleep(this.queue, ms, this.tag, this.entry.seq)
  }

  async fallocate(file: BackingFile, mode: number, offset: number, length: number): Promise<void> {
    await this.dispatcher.backend(this.queue, BackendKind.Fallocate, mode, file, this.tag, this.entry.seq, 0, length, offset, 'fallocate')
  }
}

export interface DispatcherOptions {
  queues: number
  depth: number
  /** Fail an IO the target has not completed after this many ms. */
  ioTimeoutMs: number
}

/** Serves one device's IOs with a target; one per device. */
export class Dispatcher {
  #bridge: NativeBridge | undefined
  readonly #target: Target
  readonly #outstanding: Array<Array<Outstanding | undefined>>
  readonly #outboxes: QueueOutbox[]
  readonly #pending = new Map<number, PendingBackend>()
  readonly #timeoutMs: number
  #nextBackendId = 1
  #flushScheduled = false
  #stopping = false
  #timer: NodeJS.Timeout | undefined
  /** Files by index, to name the one a routed read failed on. */
  readonly #files = new Map<number, BackingFile>()

  constructor(target: Target, options: DispatcherOptions) {
    this.#target = target
    this.#timeoutMs = options.ioTimeoutMs
    this.#outstanding = Array.from({ length: options.queues }, () => new Array(options.depth))
    this.#outboxes = Array.from({ length: options.queues }, () => new QueueOutbox())
    if (Number.isFinite(this.#timeoutMs) && this.#timeoutMs > 0) {
      const period = Math.max(10, Math.min(1000, this.#timeoutMs / 4))
      this.#timer = setInterval(() => this.#expire(), period)
      this.#timer.unref()
    }
  }

  attach(bridge: NativeBridge): void {
    this.#bridge = bridge
  }

  /** Reads the queue threads served through the read route, without the target. */
  routedReads(): number {
    return this.#bridge?.routedReads() ?? 0
  }

  registerFile(file: BackingFile): void {
    this.#files.set(file.index, file)
  }

  /** The native batch handler; never throws back into native code. */
  onBatch = (queue: number, ios: Float64Array, buffers: Array<ArrayBuffer | null>, backend: Float64Array): void => {
    try {
      for (let i = 0; i < backend.length; i += BACKEND_RESULT_FIELDS) {
        this.#settleBackend(backend[i]!, backend[i + 1]!)
      }
      const now = Date.now()
      const hooked = this.#target.beforeWrites ? [] as Admitted[] : undefined
      for (let i = 0, n = 0; i < ios.length; i += IO_FIELDS, n++) {
        const admitted = this.#admit(queue, ios, i, buffers[n] ?? null, now)
        if (!admitted) continue
        if (hooked && MODIFIES.has(admitted.io.op)) hooked.push(admitted)
        else this.#run(admitted)
      }
      if (hooked?.length) this.#runWriteBatch(hooked)
      this.batches++
      this.ios += ios.length / IO_FIELDS
    } catch (err) {
      // A bug here must not take the process down; the IOs time out.
      process.emitWarning(`ublk dispatch failed: ${String(err)}`)
    } finally {
      // The queue holds further IOs until this batch is acknowledged, so
      // that hand-overs grow with load rather than multiply.
      const out = this.#outboxes[queue]
      if (out) {
        out.batchTaken = true
        this.#scheduleFlush()
      }
    }
  }

  /** Batches and IOs handed over so far (their ratio is the mean batch size). */
  batches = 0
  ios = 0

  /** Records a new IO; returns it ready to run, or undefined if it was answered at once. */
  #admit(queue: number, ios: Float64Array, i: number, data: ArrayBuffer | null, now: number): Admitted | undefined {
    const tag = ios[i]!
    const seq = ios[i + 1]!
    const opCode = ios[i + 2]!
    const flags = ios[i + 3]!
    const op = OP_BY_CODE[opCode]
    const entry: Outstanding = { seq, buffer: data, deadline: now + this.#timeoutMs, native: false }
    const previous = this.#outstanding[queue]![tag]
    // The tag's last IO was a passthrough read that succeeded: no report
    // will come for it.
    if (previous?.fallbackId !== undefined) this.#pending.delete(previous.fallbackId)
    this.#outstanding[queue]![tag] = entry
    if (this.#stopping) {
      this.#finish(queue, tag, entry, -ECANCELED)
      return undefined
    }
    const handler = op && this.#target[op]
    if (!op || !handler) {
      this.#finish(queue, tag, entry, -EOPNOTSUPP)
      return undefined
    }
    const length = ios[i + 5]!
    const io = new IoRequest(this, queue, tag, entry, op, ios[i + 4]!, length, (flags & FLAG_FUA) !== 0, data)
    const routeError = ios[i + 7]!
    if (routeError !== 0) {
      const index = ios[i + 6]!
      const file = this.#files.get(index) ?? { ...NO_FILE, path: `(file ${index})`, index }
      io.failedRead = { file, error: backendError(routeError, `read of ${file.path}`) }
    }
    const success = op === 'read' || op === 'write' ? length : 0
    return { io, entry, handler, success }
  }

  /** Calls the target's method for an IO; returns when the IO is answered. */
  #run(a: Admitted): Promise<void> {
    const { io, entry, handler, success } = a
    let outcome: Promise<void> | void
    try {
      outcome = handler.call(this.#target, io)
    } catch (err) {
      this.#finish(io.queue, io.tag, entry, -errnoOf(err))
      return Promise.resolve()
    }
    if (outcome && typeof (outcome as Promise<void>).then === 'function') {
      return (outcome as Promise<void>).then(
        () => this.#finish(io.queue, io.tag, entry, success),
        (err: unknown) => this.#finish(io.queue, io.tag, entry, -errnoOf(err)),
      )
    }
    this.#finish(io.queue, io.tag, entry, success)
    return Promise.resolve()
  }

  /** The batch protocol: prologue, then the batch's writes, then the epilogue. */
  #runWriteBatch(batch: Admitted[]): void {
    const target = this.#target
    const ios = batch.map((a) => a.io)
    Promise.resolve()
      .then(() => target.beforeWrites!(ios))
      .then(
        () => Promise.all(batch.map((a) => this.#run(a))),
        (err: unknown) => {
          for (const a of batch) this.#finish(a.io.queue, a.io.tag, a.entry, -errnoOf(err))
        },
      )
      .then(() => target.afterWrites?.(ios))
      .catch((err: unknown) => process.emitWarning(`ublk afterWrites failed: ${String(err)}`))
  }

  /** Completes an IO once: late answers (after a timeout or stop) are dropped. */
  #finish(queue: number, tag: number, entry: Outstanding, result: number): void {
    const slots = this.#outstanding[queue]!
    if (slots[tag] !== entry) return
    slots[tag] = undefined
    if (entry.native) return
    const out = this.#outboxes[queue]!
    out.results.push(tag, entry.seq, result)
    out.detach.push(entry.buffer)
    this.#scheduleFlush()
  }

  passthrough(io: IoRequest, file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void {
    const entry = io.entry
    if ((io.op !== 'read' && io.op !== 'write') || this.#outstanding[io.queue]![io.tag] !== entry || entry.native) {
      throw new UblkError('EINVAL', 'passthrough needs a read or write that is still outstanding')
    }
    if (onReadError && io.op !== 'read') throw new UblkError('EINVAL', 'onReadError is for reads')
    if (this.#stopping) throw new UblkError('ECANCELED', 'passthrough: the device is stopping')
    // From here the queue thread owns the buffer and the completion; id 0
    // asks for no answer.
    entry.native = true
    const out = this.#outboxes[io.queue]!
    out.detach.push(entry.buffer)
    entry.buffer = null
    let kind = (io.op === 'read' ? BackendKind.Read : BackendKind.Write) | COMPLETES_IO
    let id = 0
    if (onReadError) {
      kind |= REPORT_FAILURE
      id = this.#takeBackendId()
      entry.fallbackId = id
      const recover = (err: Error): void => {
        // The queue thread gave the IO back: it is answered from here on.
        entry.native = false
        entry.fallbackId = undefined
        entry.deadline = Date.now() + this.#timeoutMs
        void this.#run({ io, entry, handler: () => onReadError(err), success: io.length })
      }
      this.#pending.set(id, { resolve: () => recover(new UblkError('EIO', 'read failed')), reject: recover, what: `read of ${file.path}` })
    }
    const flags = io.op === 'write' && io.fua ? RWF_DSYNC : 0
    out.requests.push(id, kind, flags, file.index, io.tag, entry.seq, 0, io.length, fileOffset)
    this.#scheduleFlush()
  }

  /** An io_uring timeout on `queue`'s ring (sleeps need no IO: tag and seq are only carried). */
  async sleep(queue: number, ms: number, tag = 0, seq = 0): Promise<void> {
    if (!(ms >= 0 && ms <= MAX_SLEEP_MS)) {
      throw new UblkError('EINVAL', `sleep takes 0..${MAX_SLEEP_MS} ms, got ${ms}`)
    }
    await this.backend(queue, BackendKind.Sleep, 0, NO_FILE, tag, seq, 0, Math.round(ms * 1000), 0, 'sleep')
  }

  #takeBackendId(): number {
    const id = this.#nextBackendId
    this.#nextBackendId = id >= 0xffffffff ? 1 : id + 1
    return id
  }

  /** Backend IO on a staging buffer, outside any IO. */
  staged(
    queue: number,
    kind: BackendKind,
    file: BackingFile,
    buffer: StagingBuffer,
    fileOffset: number,
    options: { bufOffset?: number; length?: number; dsync?: boolean },
  ): Promise<number> {
    if (!Number.isInteger(queue) || queue < 0 || queue >= this.#outboxes.length) {
      return Promise.reject(new UblkError('EINVAL', `no queue ${String(queue)}`))
    }
    const bufOffset = options.bufOffset ?? 0
    const length = options.length ?? buffer.bytes.byteLength - bufOffset
    const flags = options.dsync && kind === BackendKind.Write ? RWF_DSYNC : 0
    const what = kind === BackendKind.Read ? 'read' : 'write'
    return this.backend(queue, kind | STAGING, flags, file, buffer.index, 0, bufOffset, length, fileOffset, what)
  }

  backend(
    queue: number,
    kind: BackendKind,
    mode: number,
    file: BackingFile,
    tag: number,
    seq: number,
    bufOffset: number,
    length: number,
    fileOffset: number,
    what: string,
  ): Promise<number> {
    if (this.#stopping) {
      return Promise.reject(new UblkError('ECANCELED', `${what}: the device is stopping`))
    }
    const id = this.#takeBackendId()
    return new Promise<number>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, what: `${what} of ${file.path}` })
      this.#outboxes[queue]!.requests.push(id, kind, mode, file.index, tag, seq, bufOffset, length, fileOffset)
      this.#scheduleFlush()
    })
  }

  #settleBackend(id: number, result: number): void {
    const pending = this.#pending.get(id)
    if (!pending) return
    this.#pending.delete(id)
    if (result < 0) pending.reject(backendError(result, pending.what))
    else pending.resolve(result)
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return
    this.#flushScheduled = true
    queueMicrotask(() => this.#flush())
  }

  #flush(): void {
    this.#flushScheduled = false
    const bridge = this.#bridge
    if (!bridge) {
      // Not attached yet: answers wait for the next flush.
      return
    }
    for (let q = 0; q < this.#outboxes.length; q++) {
      const out = this.#outboxes[q]!
      if (out.empty) continue
      const { results, requests, detach, batchTaken } = out
      this.#outboxes[q] = new QueueOutbox()
      try {
        bridge.post(q, Float64Array.from(results), Float64Array.from(requests), detach, batchTaken)
      } catch (err) {
        // Malformed requests (a bad offset or length from the target) are
        // refused as a whole; fail them rather than leave them pending.
        for (let i = 0; i < requests.length; i += REQUEST_FIELDS) {
          this.#settleBackend(requests[i]!, -errnoOf(err))
        }
        bridge.post(q, Float64Array.from(results), new Float64Array(0), detach, batchTaken)
      }
    }
  }

  #expire(): void {
    const now = Date.now()
    for (let q = 0; q < this.#outstanding.length; q++) {
      const slots = this.#outstanding[q]!
      for (let tag = 0; tag < slots.length; tag++) {
        const entry = slots[tag]
        if (entry && !entry.native && entry.deadline <= now) this.#finish(q, tag, entry, -ETIMEDOUT)
      }
    }
  }

  /**
   * Before the device stops: IOs the target still holds are failed (their
   * buffers detached now), new ones are refused, backend requests rejected.
   */
  shutdown(): void {
    this.#stopping = true
    if (this.#timer) clearInterval(this.#timer)
    for (let q = 0; q < this.#outstanding.length; q++) {
      const slots = this.#outstanding[q]!
      for (let tag = 0; tag < slots.length; tag++) {
        const entry = slots[tag]
        if (entry) this.#finish(q, tag, entry, -ECANCELED)
      }
    }
    this.#flush()
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id)
      pending.reject(new UblkError('ECANCELED', `${pending.what}: the device stopped`))
    }
  }
}
