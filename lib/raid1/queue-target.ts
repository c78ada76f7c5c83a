// One queue of a RAID1 array, served in a worker: the data moves on this
// queue's own ring (reads from a member in sync, writes mirrored to every
// member that takes them), and everything that changes the array's state
// (bits on disk, failed members, repairs) is asked of the mirror on the
// device's thread (./queue-links.ts), before the IO it concerns completes.
import type { MessagePort } from 'node:worker_threads'

import { UblkError } from '../errors.js'
import type { DeviceGeometry, TargetArgs } from '../target-module.js'
import type { BackingFile, Io, Target, TargetContext } from '../target.js'
import type { Extent } from './bitmap.js'
import { isCancel, zeroMode } from './mirror.js'
import {
  COUNTER_FOREGROUND,
  COUNTER_ROUTED_FAILURES,
  fromWire,
  SharedMembers,
  toWire,
  type CopyResult,
  type MemberList,
  type Notice,
  type Reply,
  type Request,
} from './queue-protocol.js'

/** A request before it has an id (each kind of it). */
type Ask = Request extends infer R ? (R extends unknown ? Omit<R, 'id'> : never) : never

/** Requests to the mirror, answered in any order. */
class MirrorLink {
  readonly #port: MessagePort
  readonly #pending = new Map<number, { resolve(value: unknown): void; reject(err: Error): void }>()
  #next = 0
  #closed = false

  constructor(port: MessagePort) {
    this.#port = port
    port.on('message', (reply: Reply) => {
      const pending = this.#pending.get(reply.id)
      if (!pending) return
      this.#pending.delete(reply.id)
      if (reply.ok) pending.resolve(reply.value)
      else pending.reject(fromWire(reply.error))
    })
    port.on('close', () => {
      this.#closed = true
      for (const p of this.#pending.values()) p.reject(new UblkError('EIO', 'the RAID1 array closed its channel to this queue'))
      this.#pending.clear()
    })
    // The worker's own handles keep it alive while it serves.
    port.unref()
  }

  ask<T>(request: Ask): Promise<T> {
    if (this.#closed) return Promise.reject(new UblkError('EIO', 'the RAID1 array closed its channel to this queue'))
    const id = ++this.#next
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject })
      this.#port.postMessage({ ...request, id })
    })
  }

  tell(notice: Notice): void {
    if (!this.#closed) this.#port.postMessage(notice)
  }
}

interface QueueMember {
  slot: number
  path: string
  file: BackingFile
}

export class MirrorQueue implements Target {
  readonly zeroCopy = true
  readonly name = 'raid1-ts'
  readonly fua = true
  readonly #link: MirrorLink
  #ctx!: TargetContext
  #shared!: SharedMembers
  #counters!: Float64Array
  #dataOffset = 0
  #generation = -1
  #members: QueueMember[] = []
  readonly #marks = new WeakMap<readonly Io[], number>()

  constructor(port: MessagePort) {
    this.#link = new MirrorLink(port)
  }

  async open(ctx: TargetContext): Promise<void> {
    this.#ctx = ctx
    await this.#sync()
  }

  /** Takes the member list, opening the files this queue lacks, until it is current. */
  async #sync(): Promise<void> {
    for (;;) {
      const list = await this.#link.ask<MemberList>({ kind: 'members' })
      this.#shared ??= new SharedMembers(list.shared)
      this.#counters ??= new Float64Array(list.counters)
      this.#dataOffset = list.dataOffset
      const members: QueueMember[] = []
      for (const { slot, path } of list.members) {
        const known = this.#members.find((m) => m.slot === slot && m.path === path)
        if (known) members.push(known)
        else if (this.#shared.state(slot) !== 'faulty') members.push({ slot, path, file: await this.#ctx.openFile(path, { direct: true }) })
      }
      this.#members = members
      this.#generation = list.generation
      if (this.#shared.generation === list.generation) return
    }
  }

  /** Resolves once this queue knows every member's file (at once, if it does). */
  #current(): Promise<void> | undefined {
    return this.#shared.generation === this.#generation ? undefined : this.#sync()
  }

  #writable(): QueueMember[] {
    return this.#members.filter((m) => this.#shared.state(m.slot) !== 'faulty')
  }

  #active(): QueueMember[] {
    return this.#members.filter((m) => this.#shared.state(m.slot) === 'active')
  }

  read(io: Io): Promise<void> | void {
    this.#counters[COUNTER_FOREGROUND]!++
    if (io.failedRead) {
      const { file, error } = io.failedRead
      // The route is the mirror's: its file, opened on the device's thread, has this queue's member's path.
      return this.#recoverRead(io, this.#members.find((m) => m.file === file || m.path === file.path), error)
    }
    return this.#readUnrouted(io)
  }

  /** A read no route took (routes are off while a dirty resync has no source, or the array stops). */
  async #readUnrouted(io: Io): Promise<void> {
    await this.#current()
    const slot = await this.#link.ask<number>({ kind: 'reader', offset: io.offset })
    const member = this.#members.find((m) => m.slot === slot)
    if (!member) throw new UblkError('EIO', 'no member in sync')
    io.passthrough(member.file, this.#dataOffset + io.offset, (err) => this.#recoverRead(io, member, err))
  }

  async #recoverRead(io: Io, failed: QueueMember | undefined, err: Error): Promise<void> {
    if (isCancel(err)) throw err
    if (failed) this.#link.tell({ kind: 'readError', slot: failed.slot })
    const at = this.#dataOffset + io.offset
    for (const other of this.#active()) {
      if (other === failed) continue
      try {
        await io.readFrom(other.file, at)
      } catch (e) {
        if (isCancel(e)) throw e
        this.#link.tell({ kind: 'readError', slot: other.slot })
        continue
      }
      if (failed && this.#shared.state(failed.slot) === 'active') {
        await this.#link.ask({ kind: 'repair', offset: io.offset, length: io.length, failed: failed.slot, good: other.slot })
      }
      return
    }
    throw new UblkError('EIO', `read at ${io.offset}: no member could serve it`)
  }

  write(io: Io): Promise<void> | void {
    this.#counters[COUNTER_FOREGROUND]!++
    if (io.failedWrite) this.#counters[COUNTER_ROUTED_FAILURES]!++
    const stale = this.#current()
    if (stale) return stale.then(() => this.#mirror(io))
    this.#mirror(io)
  }

  #mirror(io: Io): void {
    const targets = this.#writable()
    if (targets.length === 0) throw new UblkError('EIO', 'write: no member to take it')
    const wasActive = targets.map((m) => this.#shared.state(m.slot) === 'active')
    io.mirror(
      targets.map((m) => m.file),
      this.#dataOffset + io.offset,
      (failures) =>
        this.#judge(
          'write',
          targets.map((m, i) => {
            const failed = failures.find((f) => f.file === m.file)
            return { slot: m.slot, wasActive: wasActive[i]!, ...(failed ? { error: toWire(failed.error) } : {}) }
          }),
        ),
    )
  }

  flush(io: Io): Promise<void> {
    return this.#everywhere(io, 'flush', (m) => io.fdatasync(m.file))
  }

  discard(io: Io): Promise<void> {
    this.#counters[COUNTER_FOREGROUND]!++
    return this.#everywhere(io, 'discard', (m) => io.fallocate(m.file, zeroMode(m.file), this.#dataOffset + io.offset, io.length))
  }

  writeZeroes(io: Io): Promise<void> {
    this.#counters[COUNTER_FOREGROUND]!++
    return this.#everywhere(io, 'write zeroes', (m) => io.fallocate(m.file, zeroMode(m.file), this.#dataOffset + io.offset, io.length))
  }

  /** Runs an operation on every member that takes writes; the mirror judges any that failed. */
  async #everywhere(io: Io, what: string, op: (m: QueueMember) => Promise<unknown>): Promise<void> {
    await this.#current()
    const targets = this.#writable()
    const wasActive = targets.map((m) => this.#shared.state(m.slot) === 'active')
    const settled = await Promise.allSettled(targets.map(op))
    const results: CopyResult[] = settled.map((r, i) => ({
      slot: targets[i]!.slot,
      wasActive: wasActive[i]!,
      ...(r.status === 'rejected' ? { error: toWire(r.reason) } : {}),
    }))
    if (results.some((r) => r.wasActive) && results.every((r) => !r.error)) return
    await this.#judge(what, results)
  }

  #judge(what: string, results: CopyResult[]): Promise<void> {
    return this.#link.ask({ kind: 'judge', what, results })
  }

  beforeWrites(ios: readonly Io[]): Promise<void> {
    const extents: Extent[] = ios.map((io) => ({ offset: io.offset, length: io.length }))
    return this.#link.ask<number>({ kind: 'mark', extents }).then((mark) => {
      this.#marks.set(ios, mark)
      return this.#current()
    })
  }

  afterWrites(ios: readonly Io[]): void {
    const mark = this.#marks.get(ios)
    if (mark === undefined) return
    this.#marks.delete(ios)
    this.#link.tell({ kind: 'unmark', mark })
  }
}

/** The module's default export: each worker's instance, given its port to the mirror. */
export default function raid1Queue(_args: TargetArgs, device: DeviceGeometry): Target {
  if (!device.port) {
    throw new UblkError('EINVAL', 'this target serves one queue of a RAID1 array, in a worker the array starts: serve the array with createRaid1 or assembleRaid1')
  }
  return new MirrorQueue(device.port)
}
