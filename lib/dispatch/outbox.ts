// What goes back to the queue threads: IO results, buffers to detach and
// backend requests, gathered per queue and posted in one native call per
// JavaScript tick. Backend requests are promises settled by the results
// that come back with later batches.
import { backendError, errnoOf, UblkError } from '../errors.js'
import { REQUEST_FIELDS } from '../wire.js'

import type { NativeBridge } from '../../index.js'

class QueueOut {
  results: number[] = []
  requests: number[] = []
  detach: Array<ArrayBuffer | null> = []
  /** A batch was taken in since the last post: the queue may send the next. */
  batchTaken = false

  get empty(): boolean {
    return this.results.length === 0 && this.requests.length === 0 && this.detach.length === 0 && !this.batchTaken
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
    out.results.push(tag, seq, result)
    out.detach.push(buffer)
    this.#schedule()
  }

  /** Detaches a buffer the native side takes over (a passthrough). */
  detach(queue: number, buffer: ArrayBuffer | null): void {
    this.#queues[queue]!.detach.push(buffer)
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
    const [tag, seq] = target === null ? [0, 0] : 'staging' in target ? [target.staging, 0] : [target.tag, target.seq]
    this.#queues[queue]!.requests.push(id, kind, mode, file, tag, seq, bufOffset, length, fileOffset)
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

  #schedule(): void {
    if (this.#scheduled) return
    this.#scheduled = true
    queueMicrotask(() => this.flush())
  }

  flush(): void {
    this.#scheduled = false
    const bridge = this.#bridge
    // Not attached yet: answers wait for the next flush.
    if (!bridge) return
    for (let q = 0; q < this.#queues.length; q++) {
      const out = this.#queues[q]!
      if (out.empty) continue
      this.#queues[q] = new QueueOut()
      const { results, requests, detach, batchTaken } = out
      try {
        bridge.post(q, Float64Array.from(results), Float64Array.from(requests), detach, batchTaken)
      } catch (err) {
        // Each request is checked on its own natively; a whole post fails
        // only if its tables are malformed. Fail its requests, keep the results.
        for (let i = 0; i < requests.length; i += REQUEST_FIELDS) {
          this.settle(requests[i]!, -errnoOf(err))
        }
        bridge.post(q, Float64Array.from(results), new Float64Array(0), detach, batchTaken)
      }
    }
  }
}
