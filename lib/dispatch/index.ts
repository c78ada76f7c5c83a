// Runs a TypeScript target: turns each hand-over from a queue thread into
// calls of the target's methods, and sends results and backend requests
// back in one native call per tick (see ./outbox.ts).
import { backendError, errnoNumber, errnoOf, UblkError } from '../errors.js'
import type { Handles } from '../handles.js'
import { checkMirror, checkPassthrough, type BackingFile, type FailedTransfer, type Io, type IoOp, type ReadErrorHandler, type Target, type WriteErrorHandler } from '../target.js'
import {
  BACKEND_RESULT_FIELDS,
  COMPLETES_IO,
  EVENT_BATCH_DONE,
  EVENT_BATCH_OPEN,
  EVENT_FIELDS,
  EVENT_STOPPED,
  FLAG_FUA,
  FOR_IO,
  IO_FIELDS,
  KIND_READ,
  KIND_WRITE,
  NO_BATCH,
  OP_DISCARD,
  OP_FLUSH,
  OP_READ,
  OP_WRITE,
  OP_WRITE_ZEROES,
  REPORT_FAILURE,
  RWF_DSYNC,
} from '../wire.js'
import { WriteBatches } from './batches.js'
import { abandonIo, IoRequest, type IoHost, type Outstanding } from './io.js'
import { Outbox } from './outbox.js'

import type { NativeBridge } from '../../index.js'

export { Outbox } from './outbox.js'

const ETIMEDOUT = errnoNumber('ETIMEDOUT')
const EOPNOTSUPP = errnoNumber('EOPNOTSUPP')
const ECANCELED = errnoNumber('ECANCELED')

/** IO ops by the kernel's code. */
const OP_BY_CODE: ReadonlyArray<IoOp | undefined> = Object.assign([], {
  [OP_READ]: 'read',
  [OP_WRITE]: 'write',
  [OP_FLUSH]: 'flush',
  [OP_DISCARD]: 'discard',
  [OP_WRITE_ZEROES]: 'writeZeroes',
})

type Handler = (io: Io) => Promise<void> | void

export interface DispatcherOptions {
  queues: number
  depth: number
  /** Fail an IO the target has not completed after this many ms (0: never). */
  ioTimeoutMs: number
  handles: Handles
  /** The device stopped, whoever stopped it. */
  onStopped?: () => void
}

/** Serves one device's IOs with a target; one per device. */
export class Dispatcher implements IoHost {
  readonly outbox: Outbox
  readonly handles: Handles
  readonly zeroCopy: boolean
  readonly #target: Target
  /** The target's methods by op, looked up once. */
  readonly #handlers: Partial<Record<IoOp, Handler>>
  readonly #outstanding: Array<Array<Outstanding | undefined>>
  /** Each queue's table of hand-over rows, as the native side last gave it. */
  readonly #tables: Array<Float64Array | undefined> = []
  readonly #batches: WriteBatches | undefined
  readonly #timeoutMs: number
  readonly #onStopped: (() => void) | undefined
  #bridge: NativeBridge | undefined
  #stopping = false
  #timer: NodeJS.Timeout | undefined

  /** Hand-overs and IOs so far (their ratio is the mean batch size). */
  batches = 0
  ios = 0

  constructor(target: Target, options: DispatcherOptions) {
    this.#target = target
    this.#handlers = {}
    for (const op of OP_BY_CODE) {
      const method: unknown = op && target[op]
      if (op && typeof method === 'function') this.#handlers[op] = method as Handler
    }
    this.zeroCopy = target.zeroCopy === true
    this.handles = options.handles
    this.#timeoutMs = options.ioTimeoutMs
    this.#onStopped = options.onStopped
    this.outbox = new Outbox(options.queues)
    this.#outstanding = Array.from({ length: options.queues }, () => new Array(options.depth))
    if (hasBatchHooks(target)) this.#batches = new WriteBatches(target, options.queues, errnoOf)
    if (Number.isFinite(this.#timeoutMs) && this.#timeoutMs > 0) {
      const period = Math.max(10, Math.min(1000, this.#timeoutMs / 4))
      this.#timer = setInterval(() => this.#expire(), period)
      this.#timer.unref()
    }
  }

  attach(bridge: NativeBridge): void {
    this.#bridge = bridge
    this.outbox.attach(bridge)
  }

  /** Reads the queue threads served through the read route, without the target. */
  routedReads(): number {
    return this.#bridge?.routedReads() ?? 0
  }

  /** Writes the queue threads served through the write route, without the target. */
  routedWrites(): number {
    return this.#bridge?.routedWrites() ?? 0
  }

  /**
   * The native batch handler; never throws back into native code. The
   * hand-over's rows are in the queue's table (see `createBridge`), which
   * comes along only when it is new.
   */
  onBatch = (queue: number, ios: number, backend: number, events: number, buffers: Array<ArrayBuffer | null> | null, table: Float64Array | null): void => {
    this.outbox.beginHandOver()
    // Whether something of this hand-over settles in a later microtask.
    let later = backend > 0 || events > 0
    try {
      if (table) this.#tables[queue] = table
      const rows = this.#tables[queue]
      if (!rows) throw new Error(`queue ${queue} handed over rows before its table`)
      let i = 0
      const iosEnd = ios * IO_FIELDS
      const backendEnd = iosEnd + backend * BACKEND_RESULT_FIELDS
      const eventsEnd = backendEnd + events * EVENT_FIELDS
      // Backend results and events first: rows of IOs the target
      // answers at once are read before any of its code runs.
      for (i = iosEnd; i < backendEnd; i += BACKEND_RESULT_FIELDS) this.outbox.settle(rows[i]!, rows[i + 1]!)
      for (; i < eventsEnd; i += EVENT_FIELDS) this.#event(queue, rows[i]!, rows[i + 1]!, rows[i + 2]!)
      const now = Date.now()
      for (i = 0; i < iosEnd; i += IO_FIELDS) {
        const io = this.#admit(queue, rows, i, buffers?.[i / IO_FIELDS] ?? null, now)
        const batch = rows[i + 6]!
        if (batch !== NO_BATCH && this.#batches?.add(queue, batch, io && this.#member(io))) {
          later = true
          continue
        }
        if (io && this.#run(io, this.#handlers[io.op]!, successOf(io))) later = true
      }
      this.batches++
      this.ios += ios
    } catch (err) {
      // A bug here must not take the process down; the IOs time out.
      process.emitWarning(`ublk dispatch failed: ${String(err)}`, 'UblkWarning')
    } finally {
      // The queue holds further IOs until this hand-over is acknowledged,
      // so that hand-overs grow with load rather than multiply.
      if (queue >= 0 && queue < this.outbox.queues) this.outbox.batchTaken(queue)
      // Answered at once (a synchronous target): posted before returning,
      // without waiting for a microtask.
      this.outbox.endHandOver(!later)
    }
  }

  #event(queue: number, kind: number, batch: number, count: number): void {
    if (kind === EVENT_BATCH_OPEN) this.#batches?.open(queue, batch, count)
    else if (kind === EVENT_BATCH_DONE) this.#batches?.done(queue, batch)
    else if (kind === EVENT_STOPPED) this.#onStopped?.()
  }

  #member(io: IoRequest) {
    return {
      io,
      run: () => this.#run(io, this.#handlers[io.op]!, successOf(io)),
      fail: (errno: number) => this.#finish(io.queue, io.tag, io.entry, -errno),
    }
  }

  /** Records a new IO; returns it ready to run, or undefined if it was answered at once. */
  #admit(queue: number, ios: Float64Array, i: number, data: ArrayBuffer | null, now: number): IoRequest | undefined {
    const tag = ios[i]!
    const seq = ios[i + 1]!
    const op = OP_BY_CODE[ios[i + 2]!]
    const entry: Outstanding = { seq, buffer: data, deadline: now + this.#timeoutMs, native: false }
    this.#outstanding[queue]![tag] = entry
    if (this.#stopping) {
      this.#finish(queue, tag, entry, -ECANCELED)
      return undefined
    }
    if (!op || !this.#handlers[op]) {
      this.#finish(queue, tag, entry, -EOPNOTSUPP)
      return undefined
    }
    const length = ios[i + 5]!
    const io = new IoRequest(this, queue, tag, entry, op, ios[i + 4]!, length, (ios[i + 3]! & FLAG_FUA) !== 0, data)
    const routeError = ios[i + 8]!
    if (routeError !== 0) {
      const handle = ios[i + 7]!
      const file = this.handles.fileOf(handle) ?? this.#deviceFile(handle)
      const failure = { file, error: backendError(routeError, `${op} of ${file.path}`) }
      if (op === 'write') io.failedWrite = failure
      else io.failedRead = failure
    }
    return io
  }

  /**
   * Calls `handler` for an IO (the target's method, or what answers a
   * handed-over IO that failed); if it returns a promise, so does this,
   * settled when the IO is answered.
   */
  #run(io: IoRequest, handler: Handler, success: number): Promise<void> | undefined {
    const entry = io.entry
    let outcome: Promise<void> | void
    try {
      outcome = handler.call(this.#target, io)
    } catch (err) {
      this.#finish(io.queue, io.tag, entry, -errnoOf(err))
      return undefined
    }
    if (outcome && typeof (outcome as Promise<void>).then === 'function') {
      return (outcome as Promise<void>).then(
        () => this.#finish(io.queue, io.tag, entry, success),
        (err: unknown) => this.#finish(io.queue, io.tag, entry, -errnoOf(err)),
      )
    }
    this.#finish(io.queue, io.tag, entry, success)
    return undefined
  }

  /** Completes an IO once: late answers (after a timeout or stop) are dropped. */
  /**
   * A file a route named that this thread did not open (a primary's, for
   * a worker), known here from now on; a stand-in if the device has none.
   */
  #deviceFile(handle: number): BackingFile {
    const opened = this.#bridge?.backingFile(handle)
    if (opened) return this.handles.file(opened.path, opened)
    return { path: `(file ${handle})`, size: 0, direct: false, readOnly: true, blockDevice: false }
  }

  #finish(queue: number, tag: number, entry: Outstanding, result: number): void {
    const slots = this.#outstanding[queue]!
    if (slots[tag] !== entry) return
    if (entry.native) {
      // The queue thread completes it; one whose outcome is to be reported
      // stays on record until the report comes.
      if (!entry.reporting) slots[tag] = undefined
      return
    }
    slots[tag] = undefined
    this.outbox.result(queue, tag, entry.seq, result, entry.buffer)
  }

  passthrough(io: IoRequest, file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void {
    checkPassthrough(io.op)
    if (onReadError && io.op !== 'read') throw new UblkError('EINVAL', 'onReadError is for reads')
    this.#handOver(io, 'passthrough', [file], fileOffset, onReadError && ((failures) => onReadError(failures[0]!.error)))
  }

  mirror(io: IoRequest, files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): void {
    checkMirror(io.op, files)
    this.#handOver(io, 'mirror', files, fileOffset, onWriteError)
  }

  /**
   * Hands a read or write over to the queue thread, to or from each of
   * `files` at `fileOffset`; it completes the IO when every transfer is
   * done. With `onFailure`, every transfer's outcome comes back (all in one
   * hand-over), and if any failed the IO is the handler's to answer.
   */
  #handOver(
    io: IoRequest,
    what: string,
    files: readonly BackingFile[],
    fileOffset: number,
    onFailure?: (failures: FailedTransfer[]) => Promise<void> | void,
  ): void {
    const entry = io.entry
    if (this.#outstanding[io.queue]![io.tag] !== entry || entry.native) {
      throw new UblkError('EINVAL', `${what} needs a read or write that is still outstanding`)
    }
    if (this.#stopping) throw new UblkError('ECANCELED', `${what}: the device is stopping`)
    // Every file is checked before anything is sent.
    const handles = files.map((file) => this.handles.handleOf(file, what))
    // From here the queue thread owns the buffer and the completion. A
    // request it refuses fails the IO with its errno (or is reported).
    entry.native = true
    entry.reporting = onFailure !== undefined
    this.outbox.detach(io.queue, entry.buffer)
    entry.buffer = null
    const kind = (io.op === 'read' ? KIND_READ : KIND_WRITE) | COMPLETES_IO | FOR_IO | (onFailure ? REPORT_FAILURE : 0)
    const flags = io.op === 'write' && io.fua ? RWF_DSYNC : 0
    const target = { tag: io.tag, seq: entry.seq }
    const failures: FailedTransfer[] = []
    let outstanding = files.length
    const settled = (file: BackingFile, error?: Error): void => {
      if (error) failures.push({ file, error })
      if (--outstanding === 0) this.#reported(io, entry, failures, onFailure!)
    }
    for (let i = 0; i < files.length; i++) {
      let id = 0
      if (onFailure) {
        id = this.outbox.takeId()
        const file = files[i]!
        this.outbox.expect(id, { resolve: () => settled(file), reject: (err) => settled(file, err), what: `${io.op} of ${file.path}` })
      }
      this.outbox.push(io.queue, id, kind, flags, handles[i]!, target, 0, io.length, fileOffset)
    }
  }

  /** Every transfer of a handed-over IO reported its outcome. */
  #reported(io: IoRequest, entry: Outstanding, failures: FailedTransfer[], onFailure: (failures: FailedTransfer[]) => Promise<void> | void): void {
    const slots = this.#outstanding[io.queue]!
    if (slots[io.tag] !== entry) return
    entry.reporting = false
    if (failures.length === 0) {
      // The queue thread completed the IO.
      slots[io.tag] = undefined
      return
    }
    if (this.#stopping) {
      // The queue threads failed the IO at the stop: the handler only
      // learns what became of it (a mirror, that its copies may differ).
      slots[io.tag] = undefined
      Promise.resolve()
        .then(() => onFailure(failures))
        .catch(() => undefined)
      return
    }
    // The queue thread gave the IO back: it is answered from here on.
    entry.native = false
    entry.deadline = Date.now() + this.#timeoutMs
    void this.#run(io, () => onFailure(failures), io.length)
  }

  #expire(): void {
    const now = Date.now()
    for (let q = 0; q < this.#outstanding.length; q++) {
      const slots = this.#outstanding[q]!
      for (let tag = 0; tag < slots.length; tag++) {
        const entry = slots[tag]
        if (entry && !entry.native && entry.deadline <= now) {
          abandonIo(entry, new UblkError('ETIMEDOUT', `the IO was not answered within ${this.#timeoutMs} ms`))
          this.#finish(q, tag, entry, -ETIMEDOUT)
        }
      }
    }
  }

  /**
   * Before the device stops: IOs the target still holds are failed (their
   * buffers detached now), new ones are refused, backend requests rejected.
   */
  shutdown(): void {
    if (this.#stopping) return
    this.#stopping = true
    if (this.#timer) clearInterval(this.#timer)
    for (let q = 0; q < this.#outstanding.length; q++) {
      const slots = this.#outstanding[q]!
      for (let tag = 0; tag < slots.length; tag++) {
        const entry = slots[tag]
        if (!entry) continue
        abandonIo(entry, new UblkError('ECANCELED', 'the device is stopping'))
        this.#finish(q, tag, entry, -ECANCELED)
      }
    }
    this.outbox.close()
  }
}

/** What a completed IO answers: its length for a read or write, else 0. */
function successOf(io: IoRequest): number {
  return io.op === 'read' || io.op === 'write' ? io.length : 0
}

/** Whether a target runs batch hooks, and so must be told of write batches. */
export function hasBatchHooks(target: Target): boolean {
  return typeof target.beforeWrites === 'function' || typeof target.afterWrites === 'function'
}
