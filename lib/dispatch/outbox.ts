// What goes back to the queue threads: IO results, buffers to detach and
// backend requests, gathered per queue and posted in one native call per
// JavaScript tick. Backend requests are promises settled by the results
// that come back with later batches.
import { backendError, errnoOf, UblkError } from '../errors.js'
import { REQUEST_FIELDS, RESULT_FIELDS } from '../wire.js'

import type { NativeBridge } from '../../index.js'

/** Rows of numbers for a native call, in a Float64Array kept from one call to the next. */
class Rows {
  table: Float64Array
  /** Numbers written so far. */
  size = 0

  constructor(readonly fields: number) {
    this.table = new Float64Array(fields * 32)
  }

  /** The table, with room for one more row at `size`. */
  room(): Float64Array {
    if (this.size + this.fields > this.table.length) {
      const bigger = new Float64Array(this.table.length * 2)
      bigger.set(this.table)
      this.table = bigger
    }
    return this.table
  }

  get count(): number {
    return this.size / this.fields
  }
}

class QueueOut {
  readonly results = new Rows(RESULT_FIELDS)
  readonly requests = new Rows(REQUEST_FIELDS)
  detach: ArrayBuffer[] = []
  /** A batch was taken in since the last post: the queue may send the next. */
  batchTaken = false

  get empty(): boolean {
    return this.results.size === 0 && this.requests.size === 0 && this.detach.length === 0 && !this.batchTaken
  }

  clear(): void {
    this.results.size = 0
    this.requests.size = 0
    if (this.detach.length > 0) this.detach = []
    this.batchTaken = false
  }
}

interface Pending {
  resolve(result: number): void
  reject(err: Error): void
  what: string
}

/** Where a request reads or writes: an IO's buffer, a staging buffer, or nothing. */
export type RequestTarget = { tag: number; seq: number } | { staging: number } | null

export class Outbox {
  #bridge: NativeBridge | undefined
  readonly #queues: QueueOut[]
  readonly #pending = new Map<number, Pending>()
  #nextId = 1
  #scheduled = false
  /** Hand-overs being taken in: what they answer waits for `endHandOver`. */
  #handOvers = 0
  #closed = false

  constructor(queues: number) {
    this.#queues = Array.from({ length: queues }, () => new QueueOut())
  }

  attach(bridge: NativeBridge): void {
    this.#bridge = bridge
    this.#schedule()
  }

  get queues(): number {
    return this.#queues.length
  }

  /** An IO's result; its buffer is detached in the same native call. */
  result(queue: number, tag: number, seq: number, result: number, buffer: ArrayBuffer | null): void {
    const out = this.#queues[queue]!
    const rows = out.results
    const table = rows.room()
    const at = rows.size
    table[at] = tag
    table[at + 1] = seq
    table[at + 2] = result
    rows.size = at + RESULT_FIELDS
    if (buffer) out.detach.push(buffer)
    this.#schedule()
  }

  /** Detaches a buffer the native side takes over (a passthrough). */
  detach(queue: number, buffer: ArrayBuffer | null): void {
    if (buffer) this.#queues[queue]!.detach.push(buffer)
  }

  batchTaken(queue: number): void {
    this.#queues[queue]!.batchTaken = true
    this.#schedule()
  }

  /** A fresh request id (never 0, which asks for no answer). */
  takeId(): number {
    const id = this.#nextId
    this.#nextId = id >= 0xffffffff ? 1 : id + 1
    return id
  }

  /** Queues a request row as it is; its answer, if any, is the caller's to expect. */
  push(
    queue: number,
    id: number,
    kind: number,
    mode: number,
    file: number,
    target: RequestTarget,
    bufOffset: number,
    length: number,
    fileOffset: number,
  ): void {
    const tag = target === null ? 0 : 'staging' in target ? target.staging : target.tag
    const seq = target === null || 'staging' in target ? 0 : target.seq
    const rows = this.#queues[queue]!.requests
    const table = rows.room()
    const at = rows.size
    table[at] = id
    table[at + 1] = kind
    table[at + 2] = mode
    table[at + 3] = file
    table[at + 4] = tag
    table[at + 5] = seq
    table[at + 6] = bufOffset
    table[at + 7] = length
    table[at + 8] = fileOffset
    rows.size = at + REQUEST_FIELDS
    this.#schedule()
  }

  /** Calls `pending` with the result of request `id` when it comes back. */
  expect(id: number, pending: Pending): void {
    this.#pending.set(id, pending)
  }

  /** Runs a request on queue `queue`'s ring; resolves with its result (bytes or 0). */
  request(
    queue: number,
    kind: number,
    mode: number,
    file: number,
    target: RequestTarget,
    bufOffset: number,
    length: number,
    fileOffset: number,
    what: string,
  ): Promise<number> {
    if (this.#closed) return Promise.reject(new UblkError('ECANCELED', `${what}: the device is stopping`))
    if (!Number.isInteger(queue) || queue < 0 || queue >= this.#queues.length) {
      return Promise.reject(new UblkError('EINVAL', `${what}: no queue ${String(queue)}`))
    }
    const id = this.takeId()
    return new Promise<number>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, what })
      this.push(queue, id, kind, mode, file, target, bufOffset, length, fileOffset)
    })
  }

  /** A request's result came back. */
  settle(id: number, result: number): void {
    const pending = this.#pending.get(id)
    if (!pending) return
    this.#pending.delete(id)
    if (result < 0) pending.reject(backendError(result, pending.what))
    else pending.resolve(result)
  }

  /** Posts what is gathered now, and refuses new requests: the device stops. */
  close(): void {
    this.#closed = true
    this.flush()
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id)
      pending.reject(new UblkError('ECANCELED', `${pending.what}: the device stopped`))
    }
  }

  /** A hand-over is being taken in (see `endHandOver`). */
  beginHandOver(): void {
    this.#handOvers++
  }

  /**
   * The hand-over was taken in. With `postNow` (its IOs were answered at
   * once, and no promise of it is left to settle in this tick), its
   * answers are posted now; otherwise in a microtask, with those that the
   * promises settle first.
   */
  endHandOver(postNow: boolean): void {
    if (--this.#handOvers > 0) return
    if (postNow) this.flush()
    else this.#schedule()
  }

  #schedule(): void {
    if (this.#scheduled || this.#handOvers > 0) return
    this.#scheduled = true
    queueMicrotask(this.#flushNow)
  }

  readonly #flushNow = (): void => this.flush()

  flush(): void {
    this.#scheduled = false
    const bridge = this.#bridge
    // Not attached yet: answers wait for the next flush.
    if (!bridge) return
    for (let q = 0; q < this.#queues.length; q++) {
      const out = this.#queues[q]!
      if (out.empty) continue
      const { results, requests, batchTaken } = out
      const detach = out.detach.length > 0 ? out.detach : null
      try {
        bridge.post(q, results.table, results.count, requests.table, requests.count, detach, batchTaken)
      } catch (err) {
        // Each request is checked on its own natively; a whole post fails
        // only if its tables are malformed. Fail its requests, keep the results.
        const failed = requests.table.slice(0, requests.size)
        bridge.post(q, results.table, results.count, requests.table, 0, detach, batchTaken)
        for (let i = 0; i < failed.length; i += REQUEST_FIELDS) {
          this.settle(failed[i]!, -errnoOf(err))
        }
      } finally {
        // The tables are kept for the next post; the native side is done with them.
        out.clear()
      }
    }
  }
}
