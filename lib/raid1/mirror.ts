// The RAID1 target: every write goes to every member after its chunks'
// write-intent bits are on disk; reads go to one member in sync and fall
// back to the others on error, repairing the member that failed.
import type { MessagePort } from 'node:worker_threads'

import { UblkError } from '../errors.js'
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type BackingFile,
  type CloseReason,
  type Io,
  type PrimaryTarget,
  type StagingBuffer,
  type TargetContext,
} from '../target.js'
import { WriteIntentBitmap, type Extent } from './bitmap.js'
import { ChunkGuard } from './chunk-guard.js'
import { OpenChunks } from './open-chunks.js'
import { QueueLinks } from './queue-links.js'
import { Resync, type ResyncKind, type ResyncProgress, type ResyncSpeed } from './resync.js'
import { BITMAP_OFFSET, encodeSuperblock, SUPERBLOCK_BYTES, type SlotState, type Superblock } from './superblock.js'

/** Consecutive reads stay on one member for this many bytes (readahead). */
const READ_STRIPE = 1 << 20
/** Resync copies chunks in pieces of at most this many bytes. */
const COPY_PIECE = 1 << 20


/** What `Mirror.onChange` reports, as `Raid1Array` emits it. */
export type MirrorEvent =
  | { type: 'member'; slot: number; path: string; state: Member['state']; reason: string }
  | { type: 'resync'; kind: ResyncKind; phase: 'started' | 'stopped' | 'done'; chunks: number; error?: string }

export interface Member {
  readonly slot: number
  readonly path: string
  state: SlotState
  file?: BackingFile
  superblock?: StagingBuffer
  readErrors: number
  writeErrors: number
  repairedReads: number
}

export interface MemberStatus {
  slot: number
  path: string
  state: SlotState
  readErrors: number
  writeErrors: number
  repairedReads: number
}

export interface MirrorSettings {
  /** Superblock as on the freshest member (slot is per member). */
  superblock: Superblock
  members: Member[]
  /** The on-disk bitmap to start from; undefined runs without a bitmap. */
  bitmap?: Uint8Array
  /** The last run did not stop cleanly: chunks marked in the bitmap may differ. */
  unclean: boolean
  bitmapClearDelayMs: number
  /** The write route's copies run on io_uring's worker threads (`WriteRoute.offload`). */
  offloadWrites?: boolean
  resync: ResyncSpeed
  /** Runs once the device has stopped (records the clean stop on the members). */
  afterStop?: (mirror: Mirror) => Promise<void>
}

const codeOf = (err: unknown) => (err as { code?: unknown } | null)?.code
export const isCancel = (err: unknown) => codeOf(err) === 'ECANCELED'
/** An operation the member's file system lacks says nothing about the member's health. */
const isUnsupported = (err: unknown) => codeOf(err) === 'EOPNOTSUPP' || codeOf(err) === 'ENOTSUP'

/** Zeroes a range: a hole in a file (every file system has them), a zeroout on a block device. */
export const zeroMode = (file: BackingFile) =>
  (file.blockDevice ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE) | FALLOC_FL_KEEP_SIZE

/**
 * The whole array, serving every queue; or, with workers, queue 0 and the
 * requests of the instances that serve the others (./queue-target.ts).
 */
export class Mirror implements PrimaryTarget {
  /** Writes and reads go member to IO by the queue's ring: zero copy where the kernel allows. */
  readonly zeroCopy = true
  readonly name = 'raid1-ts'
  readonly fua = true
  readonly sb: Superblock
  readonly members: Member[]
  readonly chunks: number
  #ctx!: TargetContext
  #bitmap!: WriteIntentBitmap
  /** Marks writes' chunks before they start, and locks chunks for copies. */
  #guard!: ChunkGuard
  /** Chunks whose bits are durable, which the queue threads write without us. */
  #openChunks: OpenChunks | undefined
  readonly #bitmapEnabled: boolean
  readonly #initialBits: Uint8Array | undefined
  #bitmapMemory?: StagingBuffer
  #copyBuffer?: StagingBuffer
  #active: Member[] = []
  #writable: Member[] = []
  readonly #marked = new WeakMap<readonly Io[], Extent[]>()
  #needsDirtyResync: boolean
  /** A write to the members was cancelled part way (the device stopping). */
  #cancelledWrites = false
  #resync: Resync | undefined
  #resyncSource: Member | undefined
  #lastResync: ResyncProgress | undefined
  #resyncRunning: Promise<void> | undefined
  readonly #speed: ResyncSpeed
  #foreground = 0
  #sweeper: NodeJS.Timeout | undefined
  readonly #clearDelayMs: number
  readonly #offloadWrites: boolean
  #committing: Promise<void> | undefined
  #commitAgain = false
  #closing = false
  readonly #afterStop: ((mirror: Mirror) => Promise<void>) | undefined
  /** Called when a member changes state or a resync starts or ends: a line for people, and the event. */
  onChange: ((what: string, event: MirrorEvent) => void) | undefined
  /** The workers serving the other queues, if any. */
  readonly #links = new QueueLinks({
    members: () => this.members,
    dataOffset: () => this.sb.dataOffset,
    mark: (extents, onMarked) => this.#guard.mark(extents, onMarked),
    unmark: (extents) => this.#bitmap.unmark(extents),
    judge: (targets, wasActive, what, errors) => this.#judge(targets, wasActive, what, errors),
    reader: (offset) => this.#reader(offset),
    repair: (offset, length, failed, good) => this.#repair({ offset, length }, failed, good),
  })

  constructor(settings: MirrorSettings) {
    this.sb = { ...settings.superblock, slots: [...settings.superblock.slots] }
    this.members = settings.members
    this.chunks = Math.ceil(this.sb.size / this.sb.chunkSize)
    this.#bitmapEnabled = settings.bitmap !== undefined
    this.#initialBits = settings.bitmap
    this.#needsDirtyResync = settings.unclean
    this.#speed = settings.resync
    this.#clearDelayMs = settings.bitmapClearDelayMs
    this.#offloadWrites = settings.offloadWrites ?? false
    this.#afterStop = settings.afterStop
    this.#refresh()
  }

  // --- Target ---------------------------------------------------------------

  connectQueue(queue: number, port: MessagePort): void {
    this.#links.connect(queue, port)
  }

  async open(ctx: TargetContext): Promise<void> {
    this.#ctx = ctx
    this.#openChunks = new OpenChunks(ctx.writeGate(this.sb.chunkSize))
    for (const m of this.members) if (m.state !== 'faulty') await this.#attach(m)
    this.#bitmapMemory = ctx.allocBuffer(this.sb.bitmapBytes)
    if (this.#initialBits) this.#bitmapMemory.bytes.set(this.#initialBits.subarray(0, this.sb.bitmapBytes))
    this.#bitmap = new WriteIntentBitmap(this.chunks, this.sb.chunkSize, this.#bitmapMemory.bytes, {
      persist: (from, to) => this.#persistBitmap(from, to),
    })
    if (!this.#bitmapEnabled) this.#bitmap.persistent = false
    this.#bitmap.keepBits = () => this.degraded || this.#resync !== undefined || this.#needsDirtyResync || this.#cancelledWrites
    const open = this.#openChunks
    this.#bitmap.takeRoutedWrites = () => open.takeTouched()
    this.#bitmap.closeForClearing = (chunk) => open.closeIfIdle(chunk)
    this.#guard = new ChunkGuard(this.#bitmap, open)
    this.#copyBuffer = ctx.allocBuffer(Math.min(this.sb.chunkSize, COPY_PIECE))
    this.#sweeper = setInterval(() => this.#bitmap.sweep(), this.#clearDelayMs)
    this.#sweeper.unref()
  }

  /** Reads the route could not serve: none while routing, or one that failed there. */
  read(io: Io): Promise<void> | void {
    this.#foreground++
    if (io.failedRead) {
      const { file, error } = io.failedRead
      return this.#recoverRead(io, this.members.find((m) => m.file === file), error)
    }
    const member = this.#reader(io.offset)
    if (!member) throw new UblkError('EIO', 'no member in sync')
    io.passthrough(member.file!, this.sb.dataOffset + io.offset, (err) => this.#recoverRead(io, member, err))
  }

  /**
   * Mirrored by the queue thread, which completes the write once every
   * member has its copy; if a copy failed, that member is failed here
   * first, and the write succeeds if a member in sync took it. Writes to
   * chunks open in the gate never come here, unless a copy failed there:
   * then this writes every copy again, and judges the members by that.
   */
  write(io: Io): void {
    this.#foreground++
    if (io.failedWrite) this.#openChunks?.sawFailure()
    const targets = this.#writable
    if (targets.length === 0) throw new UblkError('EIO', 'write: no member to take it')
    const wasActive = targets.map((m) => m.state === 'active')
    io.mirror(
      targets.map((m) => m.file!),
      this.sb.dataOffset + io.offset,
      (failures) => this.#judge(targets, wasActive, 'write', targets.map((m) => failures.find((f) => f.file === m.file)?.error)),
    )
  }

  async flush(io: Io): Promise<void> {
    await this.#everywhere(this.#writable, 'flush', (m) => io.fdatasync(m.file!))
  }

  async discard(io: Io): Promise<void> {
    this.#foreground++
    const at = this.sb.dataOffset + io.offset
    await this.#everywhere(this.#writable, 'discard', (m) => io.fallocate(m.file!, zeroMode(m.file!), at, io.length))
  }

  async writeZeroes(io: Io): Promise<void> {
    this.#foreground++
    const at = this.sb.dataOffset + io.offset
    await this.#everywhere(this.#writable, 'write zeroes', (m) => io.fallocate(m.file!, zeroMode(m.file!), at, io.length))
  }

  beforeWrites(ios: readonly Io[]): Promise<void> | undefined {
    const extents = ios.map((io) => ({ offset: io.offset, length: io.length }))
    return this.#guard.mark(extents, () => this.#marked.set(ios, extents))
  }

  afterWrites(ios: readonly Io[]): void {
    const extents = this.#marked.get(ios)
    if (!extents) return
    this.#marked.delete(ios)
    this.#bitmap.unmark(extents)
  }

  /**
   * Called once the device stopped, while the workers serving other queues
   * close too: stops the resync and the routes at once, and records the
   * stop once the workers are gone, with what they reported.
   */
  async close(how: CloseReason = 'stopped'): Promise<void> {
    this.#closing = true
    this.#route()
    this.#resync?.abort()
    if (this.#sweeper) clearInterval(this.#sweeper)
    await this.#resyncRunning
    await this.#links.whenClosed()
    this.#links.closeAll()
    // A routed write that failed while the device stopped never reached
    // `write`: its members may differ, so the stop is not recorded clean.
    if (this.#openChunks?.failureUnseen(this.#links.routedFailuresSeen())) this.#cancelledWrites = true
    // Handed over, the array lives on in the next server, which assembles
    // it from the members as this one left them: nothing is recorded.
    if (how === 'stopped') await this.#afterStop?.(this)
  }

  // --- State ------------------------------------------------------------------

  get degraded(): boolean {
    return this.sb.slots.some((s) => s !== 'empty' && s !== 'active')
  }

  get resyncing(): boolean {
    return this.#resync !== undefined
  }

  /** A dirty resync was due and has not finished, or a write was cut short: the members may differ. */
  get dirtyResyncPending(): boolean {
    return this.#needsDirtyResync || this.#cancelledWrites || this.#resync?.progress.kind === 'dirty'
  }

  /** Queues served by instances in workers (0: this thread serves every queue). */
  get queueWorkers(): number {
    return this.#links.count
  }

  get offloadWrites(): boolean {
    return this.#offloadWrites
  }

  get bitmapEnabled(): boolean {
    return this.#bitmapEnabled
  }

  get bitmap(): WriteIntentBitmap {
    return this.#bitmap
  }

  get resyncProgress(): ResyncProgress | undefined {
    return this.#resync ? { ...this.#resync.progress } : undefined
  }

  get lastResync(): ResyncProgress | undefined {
    return this.#lastResync ? { ...this.#lastResync } : undefined
  }

  memberStatus(): MemberStatus[] {
    return this.members.map(({ slot, path, state, readErrors, writeErrors, repairedReads }) => ({
      slot,
      path,
      state,
      readErrors,
      writeErrors,
      repairedReads,
    }))
  }

  #refresh(): void {
    for (const m of this.members) this.sb.slots[m.slot] = m.state
    this.sb.slots.forEach((state, slot) => this.#links.shared.setState(slot, state))
    this.#active = this.members.filter((m) => m.state === 'active' && m.file)
    this.#writable = this.members.filter((m) => m.state !== 'faulty' && m.file)
    this.#route()
  }

  /**
   * Lets the queue threads serve reads as `#reader` would choose: from the
   * members in sync by region, or only from the source while a dirty
   * resync has not made the others match it; and writes to open chunks
   * as `write` would: to every member that takes writes.
   */
  #route(): void {
    if (!this.#ctx) return
    const source = this.#dirtySource()
    const readers = source ? (source.state === 'active' ? [source] : []) : this.#active
    if (readers.length === 0 || this.#closing) this.#ctx.routeReads(undefined)
    else this.#ctx.routeReads({ files: readers.map((m) => m.file!), fileOffset: this.sb.dataOffset, stripeBytes: READ_STRIPE })
    const writers = this.#writable
    if (writers.length === 0 || this.#closing || !this.#openChunks) this.#ctx.routeWrites(undefined)
    else this.#ctx.routeWrites({ files: writers.map((m) => m.file!), fileOffset: this.sb.dataOffset, gated: true, offload: this.#offloadWrites })
  }

  async #attach(m: Member): Promise<void> {
    m.file = await this.#ctx.openFile(m.path, { direct: true })
    m.superblock ??= this.#ctx.allocBuffer(SUPERBLOCK_BYTES)
    this.#refresh()
    this.#links.shared.membershipChanged()
  }

  // --- IO paths -----------------------------------------------------------------

  #reader(offset: number): Member | undefined {
    const active = this.#active
    const source = this.#dirtySource()
    if (source?.state === 'active') {
      // Until a dirty chunk is copied, only the source has the data reads must see.
      const resync = this.#resync
      const pending = resync?.progress.kind === 'dirty' ? resync.pending.has(Math.floor(offset / this.sb.chunkSize)) : true
      if (pending) return source
    }
    return active[Math.floor(offset / READ_STRIPE) % active.length]
  }

  /** While members may differ in chunks a crash left dirty: the member whose data counts. */
  #dirtySource(): Member | undefined {
    if (this.#resync?.progress.kind === 'dirty') return this.#resyncSource
    return this.#needsDirtyResync ? this.#active[0] : undefined
  }

  /**
   * Runs an operation on every member that takes writes; the IO succeeds
   * when a member in sync took it. A member that failed is marked faulty
   * (its bits stay set) before the IO is answered.
   */
  async #everywhere(targets: Member[], what: string, op: (m: Member) => Promise<unknown>): Promise<void> {
    const wasActive = targets.map((m) => m.state === 'active')
    const results = await Promise.allSettled(targets.map(op))
    await this.#judge(targets, wasActive, what, results.map((r) => (r.status === 'rejected' ? (r.reason as Error) : undefined)))
  }

  /**
   * After an operation on each of `targets` (`errors[i]` is how it failed
   * on `targets[i]`, if it did): members it failed on are failed; it
   * succeeded if a member that was in sync (`wasActive`) took it.
   */
  async #judge(targets: Member[], wasActive: boolean[], what: string, errors: Array<Error | undefined>): Promise<void> {
    let succeeded = false
    let unsupported: unknown
    for (let i = 0; i < targets.length; i++) {
      const error = errors[i]
      if (!error) {
        if (wasActive[i]) succeeded = true
        continue
      }
      if (isCancel(error)) {
        // The device is going away with this write half done: the members
        // may differ in its chunks, so the stop must not be recorded clean.
        this.#cancelledWrites = true
        throw error
      }
      if (isUnsupported(error)) {
        unsupported = error
        continue
      }
      targets[i]!.writeErrors++
      await this.#fail(targets[i]!, `${what} failed: ${error.message}`)
    }
    if (unsupported && !succeeded) throw unsupported
    if (!succeeded) throw new UblkError('EIO', `${what}: no member in sync took it`)
  }

  async #recoverRead(io: Io, failed: Member | undefined, err: Error): Promise<void> {
    if (isCancel(err)) throw err
    if (failed) failed.readErrors++
    const at = this.sb.dataOffset + io.offset
    for (const other of this.#active) {
      if (other === failed) continue
      try {
        await io.readFrom(other.file!, at)
      } catch (e) {
        if (isCancel(e)) throw e
        other.readErrors++
        continue
      }
      if (failed?.state === 'active') await this.#repair(io, failed, other, () => io.readFrom(other.file!, at))
      return
    }
    throw new UblkError('EIO', `read at ${io.offset}: no member could serve it`)
  }

  /**
   * Rewrites what a member failed to read, with writes to the range held
   * off; `reread` runs first under the hold (a write may have landed since).
   */
  async #repair(io: Extent & { queue?: number }, failed: Member, good: Member, reread?: () => Promise<unknown>): Promise<void> {
    const [first, last] = this.#bitmap.chunksOf(io)
    const releases = []
    for (let c = first; c <= last; c++) releases.push(await this.#guard.lock(c))
    // The repair copies through a staging buffer of its own: a read's data
    // may stay in the kernel (zero copy), where it can be read into but
    // not written from.
    const staging = this.#ctx.allocBuffer(io.length)
    try {
      const at = this.sb.dataOffset + io.offset
      await reread?.()
      await this.#ctx.read(good.file!, staging, at, { queue: io.queue ?? 0 })
      await this.#ctx.write(failed.file!, staging, at, { queue: io.queue ?? 0 })
      failed.repairedReads++
    } catch (e) {
      if (isCancel(e)) throw e
      failed.writeErrors++
      await this.#fail(failed, `repair write failed: ${(e as Error).message}`)
    } finally {
      staging.free()
      for (const release of releases) release()
    }
  }

  // --- Metadata -------------------------------------------------------------------

  async #persistBitmap(from: number, to: number): Promise<void> {
    const targets = this.#writable
    const wasActive = targets.map((m) => m.state === 'active')
    const memory = this.#bitmapMemory!
    const results = await Promise.allSettled(
      targets.map((m) =>
        this.#ctx.write(m.file!, memory, BITMAP_OFFSET + from, { bufOffset: from, length: to - from, dsync: true }),
      ),
    )
    let succeeded = false
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        if (wasActive[i]) succeeded = true
      } else if (!isCancel(r.reason)) {
        targets[i]!.writeErrors++
        void this.#fail(targets[i]!, `bitmap write failed: ${(r.reason as Error).message}`)
      }
    })
    if (!succeeded) throw new UblkError('EIO', 'the bitmap could not be written to any member in sync')
  }

  /** Writes the superblocks of every member that is not faulty (coalesced). */
  commitSuperblocks(): Promise<void> {
    if (this.#committing) {
      this.#commitAgain = true
      return this.#committing
    }
    this.#committing = (async () => {
      try {
        do {
          this.#commitAgain = false
          await this.#writeSuperblocks()
        } while (this.#commitAgain)
      } finally {
        this.#committing = undefined
      }
    })()
    return this.#committing
  }

  async #writeSuperblocks(): Promise<void> {
    if (this.#closing) return
    this.sb.events++
    this.sb.clean = false
    const targets = this.#writable
    const results = await Promise.allSettled(
      targets.map((m) => {
        encodeSuperblock({ ...this.sb, slot: m.slot }, m.superblock!.bytes)
        return this.#ctx.write(m.file!, m.superblock!, 0, { dsync: true })
      }),
    )
    for (let i = 0; i < results.length; i++) {
      const r = results[i]!
      if (r.status === 'rejected' && !isCancel(r.reason)) {
        targets[i]!.writeErrors++
        this.#failNow(targets[i]!, `superblock write failed: ${(r.reason as Error).message}`)
        this.#commitAgain = true
      }
    }
  }

  // --- Membership -------------------------------------------------------------------

  #failNow(m: Member, why: string): boolean {
    if (m.state === 'faulty' || this.#closing) return false
    m.state = 'faulty'
    this.#refresh()
    this.onChange?.(`member ${m.slot} (${m.path}) is faulty: ${why}`, { type: 'member', slot: m.slot, path: m.path, state: 'faulty', reason: why })
    return true
  }

  /** Marks a member faulty and records it on the others. */
  async #fail(m: Member, why: string): Promise<void> {
    if (this.#failNow(m, why)) await this.commitSuperblocks()
  }

  async failMember(slot: number): Promise<void> {
    const m = this.members.find((x) => x.slot === slot)
    if (!m) throw new UblkError('ENOENT', `no member in slot ${slot}`)
    if (m.state === 'faulty') throw new UblkError('EALREADY', `member ${slot} is already faulty`)
    if (m.state === 'active' && this.#active.length === 1) {
      throw new UblkError('EBUSY', `member ${slot} is the last one in sync; failing it would lose the array`)
    }
    await this.#fail(m, 'failed on request')
  }

  /** Brings a member in: `recovering` (bitmap chunks) or `rebuilding` (all). */
  async addMember(m: Member): Promise<void> {
    const old = this.members.findIndex((x) => x.slot === m.slot)
    if (old >= 0) this.members.splice(old, 1)
    this.members.push(m)
    this.members.sort((a, b) => a.slot - b.slot)
    await this.#attach(m)
    await this.commitSuperblocks()
    this.onChange?.(`member ${m.slot} (${m.path}) added, ${m.state}`, { type: 'member', slot: m.slot, path: m.path, state: m.state, reason: 'added' })
    this.startResync()
  }

  // --- Resync -------------------------------------------------------------------------

  /** Starts resyncing whatever needs it, unless a resync is already running. */
  startResync(): Promise<void> {
    if (this.#resyncRunning) return this.#resyncRunning
    this.#resyncRunning = this.#resyncLoop().finally(() => (this.#resyncRunning = undefined))
    return this.#resyncRunning
  }

  /** Resolves when no resync is running (one that stops on an error included). */
  async whenResynced(): Promise<void> {
    while (this.#resyncRunning) await this.#resyncRunning
  }

  async #resyncLoop(): Promise<void> {
    while (!this.#closing) {
      const plan = this.#nextResync()
      if (!plan) return
      const { kind, chunks, source, targets } = plan
      const resync = new Resync(
        {
          kind,
          chunks,
          copy: (chunk) => this.#copyChunk(chunk, source, targets),
          foregroundIos: () => this.#foreground + this.#links.foreground() + this.#ctx.routedReads() + this.#ctx.routedWrites(),
        },
        this.#speed,
      )
      this.#resync = resync
      this.#resyncSource = source
      this.#route()
      this.onChange?.(`${kind} resync of ${chunks.length} chunk(s) started`, { type: 'resync', kind, phase: 'started', chunks: chunks.length })
      let done: boolean
      try {
        done = await resync.run()
      } finally {
        this.#lastResync = { ...resync.progress }
        this.#resync = undefined
        this.#resyncSource = undefined
        this.#routeAfterResync()
      }
      if (!done) {
        if (kind === 'dirty') this.#needsDirtyResync = true
        const error = resync.progress.error ?? 'aborted'
        this.onChange?.(`${kind} resync stopped: ${error}`, { type: 'resync', kind, phase: 'stopped', chunks: chunks.length, error })
        return
      }
      await this.#finishResync(kind, targets)
    }
  }

  /**
   * The routes without the resync. A resync cut short by the device going
   * away (handed over, its files released) may end before `close` says so:
   * routes cannot be set then, and need not be.
   */
  #routeAfterResync(): void {
    try {
      this.#route()
    } catch (err) {
      process.emitWarning(`RAID1: the routes could not be set after the resync: ${(err as Error).message}`, 'UblkWarning')
    }
  }

  #nextResync(): { kind: ResyncKind; chunks: number[]; source: Member; targets: Member[] } | undefined {
    const source = this.#active[0]
    if (!source) return undefined
    const all = () => Array.from({ length: this.chunks }, (_, i) => i)
    if (this.#needsDirtyResync) {
      this.#needsDirtyResync = false
      const targets = this.#active.slice(1)
      if (targets.length > 0) {
        return { kind: 'dirty', chunks: this.#bitmapEnabled ? this.#bitmap.dirtyChunks() : all(), source, targets }
      }
    }
    const behind = this.members.filter((m) => (m.state === 'recovering' || m.state === 'rebuilding') && m.file)
    if (behind.length === 0) return undefined
    const full = !this.#bitmapEnabled || behind.some((m) => m.state === 'rebuilding')
    return { kind: full ? 'full' : 'recovery', chunks: full ? all() : this.#bitmap.dirtyChunks(), source, targets: behind }
  }

  async #finishResync(kind: ResyncKind, targets: Member[]): Promise<void> {
    if (kind === 'dirty') {
      this.onChange?.('dirty resync done', { type: 'resync', kind, phase: 'done', chunks: this.#lastResync?.total ?? 0 })
      return
    }
    const caughtUp = targets.filter((m) => m.state === 'recovering' || m.state === 'rebuilding')
    await Promise.all(caughtUp.map((m) => this.#ctx.fdatasync(m.file!)))
    for (const m of caughtUp) m.state = 'active'
    this.#refresh()
    await this.commitSuperblocks()
    for (const m of caughtUp) {
      this.onChange?.(`member ${m.slot} (${m.path}) in sync`, { type: 'member', slot: m.slot, path: m.path, state: 'active', reason: `${kind} resync done` })
    }
    this.onChange?.(`${kind} resync done: ${caughtUp.map((m) => m.slot).join(', ')} in sync`, {
      type: 'resync',
      kind,
      phase: 'done',
      chunks: this.#lastResync?.total ?? 0,
    })
  }

  /** Copies one chunk from the source (or another member in sync) to the targets. */
  async #copyChunk(chunk: number, source: Member, targets: Member[]): Promise<number> {
    const start = chunk * this.sb.chunkSize
    const end = Math.min(this.sb.size, start + this.sb.chunkSize)
    const buffer = this.#copyBuffer!
    const release = await this.#guard.lock(chunk)
    try {
      for (let offset = start; offset < end; offset += buffer.bytes.byteLength) {
        const length = Math.min(buffer.bytes.byteLength, end - offset)
        const at = this.sb.dataOffset + offset
        await this.#readForCopy(source, buffer, at, length)
        const live = targets.filter((t) => t.state !== 'faulty' && t.file)
        if (live.length === 0) throw new UblkError('EIO', 'every member being synced failed')
        const results = await Promise.allSettled(live.map((t) => this.#ctx.write(t.file!, buffer, at, { length })))
        for (let i = 0; i < results.length; i++) {
          const r = results[i]!
          if (r.status === 'rejected') {
            if (isCancel(r.reason)) throw r.reason
            live[i]!.writeErrors++
            await this.#fail(live[i]!, `resync write failed: ${(r.reason as Error).message}`)
          }
        }
      }
    } finally {
      release()
    }
    return end - start
  }

  async #readForCopy(source: Member, buffer: StagingBuffer, at: number, length: number): Promise<void> {
    const candidates = [source, ...this.#active.filter((m) => m !== source)]
    for (const m of candidates) {
      if (m.state !== 'active') continue
      try {
        await this.#ctx.read(m.file!, buffer, at, { length })
        return
      } catch (err) {
        if (isCancel(err)) throw err
        m.readErrors++
      }
    }
    throw new UblkError('EIO', `resync: no member in sync could read offset ${at - this.sb.dataOffset}`)
  }
}
