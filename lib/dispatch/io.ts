// One IO as a TypeScript target sees it: what the kernel asks, the IO's
// buffer, and backend operations on the queue's ring that use it.
import { UblkError } from '../errors.js'
import type { BackingFile, FailedRead, FailedTransfer, Io, IoOp, ReadErrorHandler, WriteErrorHandler } from '../target.js'
import { FOR_IO, KIND_FALLOCATE, KIND_FDATASYNC, KIND_FSYNC, KIND_READ, KIND_SLEEP, KIND_WRITE, RWF_DSYNC } from '../wire.js'

import type { Handles } from '../handles.js'
import type { Outbox } from './outbox.js'

const EMPTY = new Uint8Array(0)

/** A view of an IO's data; empty once the IO completed and its buffer was detached. */
function viewOf(data: ArrayBuffer | null): Uint8Array {
  if (!data || data.byteLength === 0) return EMPTY
  return new Uint8Array(data)
}

/** The dispatcher's record of an IO the target holds. */
export interface Outstanding {
  seq: number
  buffer: ArrayBuffer | null
  deadline: number
  /** Handed to the queue thread, which completes it (see `passthrough`). */
  native: boolean
  /** Handed over with its outcome to be reported: kept on record until it is. */
  reporting?: boolean
  /** Made when the target first asks for `io.signal`. */
  abort?: AbortController
  /** Why the IO was given up on (a timeout, the device stopping), once it was. */
  abandoned?: Error
}

/** Gives an IO up: its signal, made now or later, is aborted with `reason`. */
export function abandonIo(entry: Outstanding, reason: Error): void {
  entry.abandoned = reason
  entry.abort?.abort(reason)
}

/** What an IO needs of its dispatcher. */
export interface IoHost {
  /** The target declared `zeroCopy`: its IOs have no buffer. */
  readonly zeroCopy: boolean
  readonly outbox: Outbox
  readonly handles: Handles
  passthrough(io: IoRequest, file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void
  mirror(io: IoRequest, files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): void
}

export class IoRequest implements Io {
  readonly #data: ArrayBuffer | null
  /** Made when the target first asks for `io.buffer`. */
  #view: Uint8Array | undefined
  failedRead?: FailedRead
  failedWrite?: FailedTransfer

  constructor(
    private readonly host: IoHost,
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
    this.#data = data
  }

  get buffer(): Uint8Array {
    if (this.host.zeroCopy && (this.op === 'read' || this.op === 'write') && this.length > 0) {
      throw new UblkError(
        'EOPNOTSUPP',
        `io.buffer of a ${this.op}: the target declared zeroCopy, so the IO's data never reaches JavaScript (use passthrough, readFrom or writeTo)`,
      )
    }
    this.#view ??= viewOf(this.#data)
    return this.#view
  }

  get signal(): AbortSignal {
    if (!this.entry.abort) {
      this.entry.abort = new AbortController()
      if (this.entry.abandoned) this.entry.abort.abort(this.entry.abandoned)
    }
    return this.entry.abort.signal
  }

  passthrough(file: BackingFile, fileOffset: number, onReadError?: ReadErrorHandler): void {
    this.host.passthrough(this, file, fileOffset, onReadError)
  }

  mirror(files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler): void {
    this.host.mirror(this, files, fileOffset, onWriteError)
  }

  readFrom(file: BackingFile, fileOffset: number, bufOffset = 0, length = this.length - bufOffset): Promise<number> {
    return this.#request(KIND_READ, 0, file, bufOffset, length, fileOffset, 'read')
  }

  writeTo(
    file: BackingFile,
    fileOffset: number,
    bufOffset = 0,
    length = this.length - bufOffset,
    options: { dsync?: boolean } = {},
  ): Promise<number> {
    return this.#request(KIND_WRITE, options.dsync ? RWF_DSYNC : 0, file, bufOffset, length, fileOffset, 'write')
  }

  async fsync(file: BackingFile): Promise<void> {
    await this.#request(KIND_FSYNC, 0, file, 0, 0, 0, 'fsync')
  }

  async fdatasync(file: BackingFile): Promise<void> {
    await this.#request(KIND_FDATASYNC, 0, file, 0, 0, 0, 'fdatasync')
  }

  async fallocate(file: BackingFile, mode: number, offset: number, length: number): Promise<void> {
    await this.#request(KIND_FALLOCATE, mode, file, 0, length, offset, 'fallocate')
  }

  async sleep(ms: number): Promise<void> {
    await this.host.outbox.request(this.queue, KIND_SLEEP | FOR_IO, 0, 0, this.#target(), 0, Math.round(ms * 1000), 0, 'sleep')
  }

  #target(): { tag: number; seq: number } {
    return { tag: this.tag, seq: this.entry.seq }
  }

  #request(kind: number, mode: number, file: BackingFile, bufOffset: number, length: number, fileOffset: number, what: string): Promise<number> {
    const name = `${what} of ${(file as { path?: unknown } | null)?.path ?? 'a file'}`
    let handle: number
    try {
      handle = this.host.handles.handleOf(file, name)
    } catch (err) {
      return Promise.reject(err as UblkError)
    }
    return this.host.outbox.request(this.queue, kind | FOR_IO, mode, handle, this.#target(), bufOffset, length, fileOffset, name)
  }
}
