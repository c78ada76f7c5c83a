// The mirror's side of its channels to the workers serving queues 1 and
// up: answers their requests with the mirror's own logic, and keeps the
// marks each worker holds, so that a worker that dies leaves no chunk
// counted busy forever.
import type { MessagePort } from 'node:worker_threads'

import { UblkError } from '../errors.js'
import type { Extent } from './bitmap.js'
import type { Member } from './mirror.js'
import {
  COUNTER_FOREGROUND,
  COUNTER_ROUTED_FAILURES,
  fromWire,
  isRequest,
  QUEUE_COUNTERS,
  SharedMembers,
  toWire,
  type CopyResult,
  type MemberList,
  type Notice,
  type Reply,
  type Request,
} from './queue-protocol.js'

/** What the links need of the mirror. */
export interface LinkHost {
  members(): readonly Member[]
  dataOffset(): number
  /** Marks the extents (`onMarked` runs when they are counted in); resolves once their bits are durable. */
  mark(extents: Extent[], onMarked: () => void): Promise<void> | undefined
  unmark(extents: Extent[]): void
  judge(targets: Member[], wasActive: boolean[], what: string, errors: Array<Error | undefined>): Promise<void>
  reader(offset: number): Member | undefined
  repair(offset: number, length: number, failed: Member, good: Member): Promise<void>
}

class Link {
  readonly counters = new Float64Array(new SharedArrayBuffer(QUEUE_COUNTERS * Float64Array.BYTES_PER_ELEMENT))
  /** Marks the worker holds: the extents each counted in. */
  readonly marks = new Map<number, Extent[]>()
  /** Resolves once the channel closed (the worker ended, or the mirror closed it). */
  readonly closed: Promise<void>
  #nextMark = 0

  constructor(
    readonly queue: number,
    readonly port: MessagePort,
  ) {
    this.closed = new Promise((resolve) => port.once('close', () => resolve()))
  }

  hold(extents: Extent[]): number {
    const id = ++this.#nextMark
    this.marks.set(id, extents)
    return id
  }
}

export class QueueLinks {
  readonly shared = new SharedMembers()
  readonly #host: LinkHost
  readonly #links: Link[] = []

  constructor(host: LinkHost) {
    this.#host = host
  }

  connect(queue: number, port: MessagePort): void {
    const link = new Link(queue, port)
    this.#links.push(link)
    port.on('message', (message: Request | Notice) => this.#arrived(link, message))
    // The worker is gone: its marks go with it.
    port.on('close', () => this.#release(link))
  }

  /** Workers connected: the queues served on threads of their own. */
  get count(): number {
    return this.#links.length
  }

  /** IOs that reached the workers' JavaScript so far. */
  foreground(): number {
    let n = 0
    for (const l of this.#links) n += l.counters[COUNTER_FOREGROUND]!
    return n
  }

  /** Routed writes that failed and reached the workers' JavaScript. */
  routedFailuresSeen(): number {
    let n = 0
    for (const l of this.#links) n += l.counters[COUNTER_ROUTED_FAILURES]!
    return n
  }

  /** Resolves once every worker is gone: all it had to say has been heard. */
  async whenClosed(): Promise<void> {
    await Promise.all(this.#links.map((l) => l.closed))
  }

  /** After the workers closed: forgets their marks and closes the channels. */
  closeAll(): void {
    for (const link of this.#links) {
      this.#release(link)
      link.port.close()
    }
  }

  #release(link: Link): void {
    for (const extents of link.marks.values()) this.#host.unmark(extents)
    link.marks.clear()
  }

  #arrived(link: Link, message: Request | Notice): void {
    if (!isRequest(message)) return this.#notice(link, message)
    let answer: Promise<unknown>
    try {
      answer = Promise.resolve(this.#answer(link, message))
    } catch (err) {
      answer = Promise.reject(err as Error)
    }
    answer.then(
      (value) => this.#reply(link, { id: message.id, ok: true, value }),
      (err: unknown) => this.#reply(link, { id: message.id, ok: false, error: toWire(err) }),
    )
  }

  #reply(link: Link, reply: Reply): void {
    try {
      link.port.postMessage(reply)
    } catch {
      // The channel closed: the worker is gone and asks nothing more.
    }
  }

  #notice(link: Link, notice: Notice): void {
    if (notice.kind === 'unmark') {
      const extents = link.marks.get(notice.mark)
      if (!extents) return
      link.marks.delete(notice.mark)
      this.#host.unmark(extents)
    } else {
      const member = this.#member(notice.slot)
      if (member) member.readErrors++
    }
  }

  #answer(link: Link, request: Request): unknown {
    switch (request.kind) {
      case 'members':
        return this.#memberList(link)
      case 'mark':
        return this.#mark(link, request.extents)
      case 'judge':
        return this.#judge(request.what, request.results)
      case 'reader':
        return this.#host.reader(request.offset)?.slot ?? -1
      case 'repair': {
        const failed = this.#member(request.failed)
        const good = this.#member(request.good)
        if (!failed || !good) throw new UblkError('EINVAL', `repair: no member in slot ${failed ? request.good : request.failed}`)
        return this.#host.repair(request.offset, request.length, failed, good)
      }
    }
  }

  #memberList(link: Link): MemberList {
    return {
      dataOffset: this.#host.dataOffset(),
      members: this.#host.members().map((m) => ({ slot: m.slot, path: m.path })),
      generation: this.shared.generation,
      shared: this.shared.buffer,
      counters: link.counters.buffer as SharedArrayBuffer,
    }
  }

  async #mark(link: Link, extents: Extent[]): Promise<number> {
    let id: number | undefined
    try {
      await this.#host.mark(extents, () => (id = link.hold(extents)))
    } catch (err) {
      // Counted in but refused (the bitmap could not be written): counted out again.
      if (id !== undefined && link.marks.delete(id)) this.#host.unmark(extents)
      throw err
    }
    return id!
  }

  async #judge(what: string, results: CopyResult[]): Promise<void> {
    const targets: Member[] = []
    const wasActive: boolean[] = []
    const errors: Array<Error | undefined> = []
    for (const r of results) {
      const member = this.#member(r.slot)
      if (!member) continue
      targets.push(member)
      wasActive.push(r.wasActive)
      errors.push(r.error ? fromWire(r.error) : undefined)
    }
    await this.#host.judge(targets, wasActive, what, errors)
  }

  #member(slot: number): Member | undefined {
    return this.#host.members().find((m) => m.slot === slot)
  }
}
