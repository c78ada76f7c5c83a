// RAID1 arrays as users see them: create, assemble, status, fail, add, stop.
import { EventEmitter } from 'node:events'
import { resolve } from 'node:path'

import { claimRecovery, createDevice, recoverDevice, warmUpForRecovery, type Device, type DeviceOptions, type RecoveryClaim, type TargetModule } from '../device.js'
import { toUblkError, UblkError } from '../errors.js'
import { parseSize } from '../size.js'
import type { Member, MemberStatus, MirrorEvent } from './mirror.js'
import { Mirror } from './mirror.js'
import {
  hasSuperblock,
  memberCapacity,
  readBitmap,
  readSuperblock,
  writeMetadata,
  zeroFileData,
} from './offline.js'
import type { ResyncProgress, ResyncSpeed } from './resync.js'
import { layoutFor, MAX_MEMBERS, newSuperblock, type SlotState, type Superblock } from './superblock.js'

type DeviceGeometry = Pick<DeviceOptions, 'id' | 'queues' | 'depth' | 'maxIoBytes' | 'logicalBlockSize' | 'ioTimeoutMs' | 'zeroCopy' | 'batchIo' | 'recovery'>

export interface AssembleRaid1Options extends DeviceGeometry {
  /** Member files or block devices (2..8 for a new array). */
  members: string[]
  /** How long a chunk must see no write before its bit is cleared (default 5000 ms). */
  bitmapClearDelayMs?: number
  resync?: ResyncSpeed
  /**
   * Write the members from io_uring's worker threads (`WriteRoute.offload`;
   * default false): the copies run side by side on other cores instead of
   * one after another on the queue thread. Worth it where a member write
   * costs CPU (files over a RAM disk or the page cache, emulated
   * hardware); a hop between threads per write on fast devices.
   */
  offloadWrites?: boolean
  /**
   * Take over device `recover`, whose server died (an array served with
   * `recovery: 'reissue'`), instead of adding a new one: the same
   * `/dev/ublkbN` comes back with the IOs it held, after the crash
   * handling assembly always does (the freshest superblock wins, the
   * chunks the bitmap marks are resynced, and reads stay on the member
   * that counts until they are).
   */
  recover?: number
  /** With `recover`: wait while the device is still served, and assemble once its server died. */
  standby?: boolean
  /**
   * Serve queues 1 and up each in a worker thread of its own (queue 0, the
   * bitmap, the member states and resync stay on this thread). Default:
   * true when `queues > 1`.
   */
  workers?: boolean
}

export interface CreateRaid1Options extends AssembleRaid1Options {
  /** Bytes covered by one bitmap bit: a power of two from 4 KiB to 64 MiB (default 1 MiB). */
  chunkSize?: number | string
  /** The array's size; by default the most the smallest member can hold. */
  size?: number | string
  /** Keep a write-intent bitmap (default true); without it a crash resyncs everything. */
  bitmap?: boolean
  /** Overwrite members that already carry a RAID1 superblock. */
  force?: boolean
  /**
   * Block-device members are not zeroed on create, so all but the first
   * get a full initial sync; `assumeClean` skips it (their contents must
   * already match). Regular files are zeroed, which needs no sync.
   */
  assumeClean?: boolean
}

export type Raid1State = 'optimal' | 'degraded' | 'resyncing' | 'recovering' | 'failed'

export interface Raid1Status {
  uuid: string
  device: { id: number; path: string }
  size: number
  chunkSize: number
  chunks: number
  /** Where the array's data starts on each member. */
  dataOffset: number
  state: Raid1State
  degraded: boolean
  members: MemberStatus[]
  bitmap: boolean
  dirtyChunks: number
  bitmapFlushes: number
  /** Passes of the lazy bit cleaner so far (one per `bitmapClearDelayMs`). */
  bitmapSweeps: number
  events: number
  /** The resync running now. */
  resync?: ResyncProgress
  /** The last resync that ended (completed or not). */
  lastResync?: ResyncProgress
  /** Queues served by worker threads: all but queue 0, or none (one thread serves them all). */
  queueWorkers: number
  /** Member writes run on io_uring's worker threads (`offloadWrites`). */
  offloadWrites: boolean
}

/** What each worker loads to serve a queue of the array. */
const QUEUE_TARGET = resolve(__dirname, 'queue-target.js')

const DEFAULT_CHUNK = 1 << 20
const MIN_CHUNK = 4096
const MAX_CHUNK = 64 << 20

/** A RAID1 array served as `/dev/ublkbN` by this process. */
/** What a `Raid1Array` emits. */
export interface Raid1Events {
  /** The array's state changed (e.g. optimal to degraded, recovering to optimal). */
  state: [state: Raid1State]
  /** A member changed state: found faulty, added, back in sync. */
  member: [event: Extract<MirrorEvent, { type: 'member' }>]
  /** A resync started, stopped short, or is done. */
  resync: [event: Extract<MirrorEvent, { type: 'resync' }>]
  /** An error the native core reports for the array's device (see `DeviceEvents`). */
  error: [err: UblkError & { queue: number }]
}

export class Raid1Array extends EventEmitter<Raid1Events> {
  readonly #device: Device
  readonly #mirror: Mirror
  #stopping: Promise<void> | undefined
  #describe: ((what: string) => void) | undefined
  #lastState: Raid1State | undefined

  /** @internal use `createRaid1()` or `assembleRaid1()` */
  constructor(device: Device, mirror: Mirror) {
    super()
    this.#device = device
    this.#mirror = mirror
    // Events are emitted on the next turn of the event loop, in order: a
    // listener attached right after `await createRaid1()` hears the first
    // resync start, and a listener that throws cannot cut the mirror's own
    // work short (it becomes a process warning).
    mirror.onChange = (what, event) => {
      const state = this.status().state
      const changed = state !== this.#lastState
      this.#lastState = state
      setImmediate(() => {
        this.#safely(() => this.#describe?.(what))
        this.#safely(() => (event.type === 'member' ? this.emit('member', event) : this.emit('resync', event)))
        if (changed) this.#safely(() => this.emit('state', state))
      })
    }
    this.#lastState = this.status().state
    // Forwarded only while someone listens here, so that without a
    // listener the device's errors stay process warnings.
    const untyped = this as EventEmitter
    untyped.on('newListener', (name: string | symbol) => {
      if (name === 'error' && this.listenerCount('error') === 0) device.on('error', this.#forwardError)
    })
    untyped.on('removeListener', (name: string | symbol) => {
      if (name === 'error' && this.listenerCount('error') === 0) device.off('error', this.#forwardError)
    })
  }

  readonly #forwardError = (err: UblkError & { queue: number }): void => {
    this.emit('error', err)
  }

  #safely(call: () => unknown): void {
    try {
      call()
    } catch (err) {
      process.emitWarning(`a Raid1Array listener threw: ${String(err)}`, 'UblkWarning')
    }
  }

  get device(): Device {
    return this.#device
  }

  get path(): string {
    return this.#device.path
  }

  get id(): number {
    return this.#device.id
  }

  /** Called with a line of text whenever a member changes state or a resync starts or ends. */
  set onChange(listener: ((what: string) => void) | undefined) {
    this.#describe = listener
  }

  status(): Raid1Status {
    const m = this.#mirror
    const members = m.memberStatus()
    const resync = m.resyncProgress
    let state: Raid1State = m.degraded ? 'degraded' : 'optimal'
    if (!members.some((x) => x.state === 'active')) state = 'failed'
    else if (resync) state = resync.kind === 'dirty' ? 'resyncing' : 'recovering'
    return {
      uuid: m.sb.uuid,
      device: { id: this.id, path: this.path },
      size: m.sb.size,
      chunkSize: m.sb.chunkSize,
      chunks: m.chunks,
      dataOffset: m.sb.dataOffset,
      state,
      degraded: m.degraded,
      members,
      bitmap: m.bitmapEnabled,
      dirtyChunks: m.bitmap.dirtyCount,
      bitmapFlushes: m.bitmap.flushes,
      bitmapSweeps: m.bitmap.sweeps,
      events: m.sb.events,
      queueWorkers: m.queueWorkers,
      offloadWrites: m.offloadWrites,
      ...(resync ? { resync } : {}),
      ...(m.lastResync ? { lastResync: m.lastResync } : {}),
    }
  }

  /** Takes a member out of service; the array goes on degraded and keeps what it misses. */
  failMember(slot: number): Promise<void> {
    return this.#mirror.failMember(slot)
  }

  /**
   * Adds a member: the one that left a slot comes back with an incremental
   * resync of the chunks written since; anything else is a new member and
   * gets a full sync into the first free or faulty slot.
   */
  async addMember(path: string, options: { force?: boolean } = {}): Promise<void> {
    const mirror = this.#mirror
    if (typeof path !== 'string' || path === '') throw new UblkError('EINVAL', 'addMember needs a path')
    if (mirror.members.some((m) => m.path === path && m.state !== 'faulty')) {
      throw new UblkError('EEXIST', `${path} is already a member`)
    }
    const need = mirror.sb.dataOffset + mirror.sb.size
    const { bytes } = await memberCapacity(path)
    if (bytes < need) throw new UblkError('ENOSPC', `${path} holds ${bytes} bytes; a member needs ${need}`)
    let slot: number | undefined
    let state: SlotState = 'rebuilding'
    if (await hasSuperblock(path)) {
      let sb: Superblock | undefined
      try {
        sb = await readSuperblock(path)
      } catch (err) {
        if (!options.force) throw err
      }
      if (sb && sb.uuid === mirror.sb.uuid) {
        const current = mirror.members.find((m) => m.slot === sb.slot)
        if (mirror.sb.slots[sb.slot] === 'faulty' && (!current || current.state === 'faulty')) {
          slot = sb.slot
          state = mirror.bitmapEnabled ? 'recovering' : 'rebuilding'
        }
      } else if (sb && !options.force) {
        throw new UblkError('EEXIST', `${path} belongs to another RAID1 array (${sb.uuid}); pass force to overwrite it`)
      }
    }
    if (slot === undefined) {
      const faulty = mirror.sb.slots.indexOf('faulty')
      slot = faulty >= 0 ? faulty : mirror.sb.slots.indexOf('empty')
      if (slot < 0) throw new UblkError('ENOSPC', `the array has no free slot (at most ${MAX_MEMBERS} members)`)
    }
    const member: Member = { slot, path, state, readErrors: 0, writeErrors: 0, repairedReads: 0 }
    await mirror.addMember(member)
  }

  /** Resolves when no resync is running. */
  whenResynced(): Promise<void> {
    return this.#mirror.whenResynced()
  }

  /**
   * Stops the device, then records a clean stop on the members: with
   * every member in sync, the bitmap is cleared too.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#device.stop()
    return this.#stopping
  }

  /**
   * A live upgrade by a process that lives on: stops serving the array
   * without stopping its device, for a process assembling it with
   * `recover` (and `standby`) to take it over; see `Device.handOver`.
   * Nothing is recorded on the members: the next server assembles the
   * array as after a crash, from the bitmap this one kept.
   */
  handOver(): Promise<void> {
    // Not kept as the stop: a refused hand-over leaves the array served,
    // and stoppable.
    return this.#device.handOver()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }
}

function chunkSizeOf(value: number | string | undefined): number {
  const bytes = typeof value === 'string' ? parseSize(value) : (value ?? DEFAULT_CHUNK)
  if (!Number.isInteger(bytes) || bytes < MIN_CHUNK || bytes > MAX_CHUNK || (bytes & (bytes - 1)) !== 0) {
    throw new UblkError('EINVAL', `chunkSize must be a power of two from 4K to 64M, got ${String(value)}`)
  }
  return bytes
}

function checkMemberList(members: unknown, min: number): string[] {
  if (!Array.isArray(members) || members.some((m) => typeof m !== 'string' || m === '')) {
    throw new UblkError('EINVAL', 'members must be an array of paths')
  }
  if (members.length < min || members.length > MAX_MEMBERS) {
    throw new UblkError('EINVAL', `a RAID1 array takes ${min}..${MAX_MEMBERS} members, got ${members.length}`)
  }
  if (new Set(members).size !== members.length) throw new UblkError('EINVAL', 'a member is listed twice')
  return members as string[]
}

/**
 * Creates a new array on `members`: writes a superblock and an empty bitmap
 * to each, zeroes regular files, and serves the array. Refuses members that
 * already belong to an array unless `force` is set.
 */
export async function createRaid1(options: CreateRaid1Options): Promise<Raid1Array> {
  if (typeof options !== 'object' || options === null) throw new UblkError('EINVAL', 'createRaid1 needs options')
  if (options.recover !== undefined) {
    throw new UblkError('EINVAL', 'createRaid1 makes a new array: to take over the device of an existing one, use assembleRaid1 with recover')
  }
  checkServing(options)
  const paths = checkMemberList(options.members, 2)
  const chunkSize = chunkSizeOf(options.chunkSize)
  const capacities = await Promise.all(paths.map((p) => memberCapacity(p)))
  if (!options.force) {
    for (const p of paths) {
      if (await hasSuperblock(p)) {
        throw new UblkError('EEXIST', `${p} already belongs to a RAID1 array; assemble it, or pass force to overwrite it`)
      }
    }
  }
  const smallest = Math.min(...capacities.map((c) => c.bytes))
  let size: number
  if (options.size !== undefined) {
    size = typeof options.size === 'string' ? parseSize(options.size) : options.size
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UblkError('EINVAL', `size must be a positive multiple of 4096, got ${String(options.size)}`)
    }
  } else {
    size = Math.floor((smallest - layoutFor(smallest, chunkSize).dataOffset) / 4096) * 4096
  }
  const { dataOffset } = layoutFor(size, chunkSize)
  capacities.forEach((c, i) => {
    if (c.bytes < dataOffset + size) {
      throw new UblkError('ENOSPC', `${paths[i]} holds ${c.bytes} bytes; a member of a ${size}-byte array needs ${dataOffset + size}`)
    }
  })
  const sb = newSuperblock(size, chunkSize, paths.length, options.bitmap !== false)
  const members: Member[] = paths.map((path, slot) => ({
    slot,
    path,
    state: slot > 0 && capacities[slot]!.blockDevice && !options.assumeClean ? 'rebuilding' : 'active',
    readErrors: 0,
    writeErrors: 0,
    repairedReads: 0,
  }))
  for (const m of members) if (!capacities[m.slot]!.blockDevice) await zeroFileData(m.path, dataOffset)
  const bitmap = options.bitmap === false ? undefined : new Uint8Array(sb.bitmapBytes)
  return start(options, sb, members, bitmap, false)
}

/**
 * Assembles an existing array from its members: takes the freshest
 * superblock (highest event count), brings back members that fell behind
 * with an incremental resync, and after a crash resyncs the chunks the
 * bitmap marks. Members that are missing leave the array degraded.
 */
export async function assembleRaid1(options: AssembleRaid1Options): Promise<Raid1Array> {
  if (typeof options !== 'object' || options === null) throw new UblkError('EINVAL', 'assembleRaid1 needs options')
  checkServing(options)
  const paths = checkMemberList(options.members, 1)
  if (options.recover === undefined) return assembleFrom(paths, options)
  // A standby may wait long for the claim: the workers for queues 1 and up start meanwhile.
  const unused = options.standby === true ? await warmUpForRecovery(options.recover, { module: QUEUE_TARGET }, true, options) : async () => {}
  // The members are read, and their metadata written, only under the
  // device's recovery claim: once their last writer is gone, and by one
  // recoverer only.
  try {
    const claim = await claimRecovery(options.recover, { standby: options.standby === true })
    try {
      return await assembleFrom(paths, options, claim)
    } finally {
      claim.release()
    }
  } finally {
    await unused()
  }
}

async function assembleFrom(paths: string[], options: AssembleRaid1Options, claim?: RecoveryClaim): Promise<Raid1Array> {
  const found = await Promise.all(paths.map(async (path) => ({ path, sb: await readSuperblock(path) })))
  const fresh = found.reduce((a, b) => (b.sb.events > a.sb.events ? b : a))
  for (const { path, sb } of found) {
    if (sb.uuid !== fresh.sb.uuid) {
      throw new UblkError('EINVAL', `${path} belongs to array ${sb.uuid}, ${fresh.path} to ${fresh.sb.uuid}: not one array`)
    }
    if (sb.size !== fresh.sb.size || sb.chunkSize !== fresh.sb.chunkSize) {
      throw new UblkError('EINVAL', `${path} records a different size or chunk size than ${fresh.path}`)
    }
    const { bytes } = await memberCapacity(path)
    if (bytes < sb.dataOffset + sb.size) {
      throw new UblkError('ENOSPC', `${path} holds ${bytes} bytes, less than its superblock needs (${sb.dataOffset + sb.size})`)
    }
  }
  const slotsSeen = new Map<number, string>()
  for (const { path, sb } of found) {
    const other = slotsSeen.get(sb.slot)
    if (other) throw new UblkError('EINVAL', `${path} and ${other} both claim slot ${sb.slot}`)
    slotsSeen.set(sb.slot, path)
  }
  const members: Member[] = found.map(({ path, sb }) => {
    const recorded = fresh.sb.slots[sb.slot]
    if (recorded === 'empty') throw new UblkError('EINVAL', `${path} was removed from the array (slot ${sb.slot})`)
    let state: SlotState = recorded === 'rebuilding' ? 'rebuilding' : recorded === 'active' ? 'active' : 'recovering'
    if (state === 'active' && sb.events < fresh.sb.events) state = 'recovering'
    return { slot: sb.slot, path, state, readErrors: 0, writeErrors: 0, repairedReads: 0 }
  })
  // Members the freshest superblock knows of but that were not given are missing.
  const slots = fresh.sb.slots.map((s, i): SlotState => (s !== 'empty' && !slotsSeen.has(i) ? 'faulty' : s))
  const superblock: Superblock = { ...fresh.sb, slots }
  if (!members.some((m) => m.state === 'active')) {
    throw new UblkError('ENODEV', 'no member given holds the current data; cannot assemble')
  }
  const freshActive = found.find((f) => f.sb.events === fresh.sb.events && members.find((m) => m.path === f.path)?.state === 'active')!
  const bitmap = fresh.sb.bitmap ? await readBitmap(freshActive.path, fresh.sb) : undefined
  // Before anything is written: the device to take over must be this array's.
  if (claim && claim.info.size !== superblock.size) {
    throw new UblkError('EINVAL', `ublk device ${claim.info.id} holds ${claim.info.size} bytes, the array ${superblock.uuid} ${superblock.size}: not this array's device`)
  }
  return start(options, superblock, members, bitmap, !fresh.sb.clean, claim)
}

async function start(
  options: AssembleRaid1Options,
  superblock: Superblock,
  members: Member[],
  bitmap: Uint8Array | undefined,
  unclean: boolean,
  claim?: RecoveryClaim,
): Promise<Raid1Array> {
  const clearDelay = clearDelayOf(options)
  // Running: not clean until stopped cleanly, one event later on every member.
  const running: Superblock = { ...superblock, events: superblock.events + 1, clean: false }
  for (const m of members) running.slots[m.slot] = m.state
  const bits = bitmap ?? new Uint8Array(superblock.bitmapBytes)
  for (const m of members) await writeMetadata(m.path, { ...running, slot: m.slot }, bits)
  const mirror = new Mirror({
    superblock: running,
    members,
    bitmap,
    unclean,
    bitmapClearDelayMs: clearDelay,
    offloadWrites: options.offloadWrites ?? false,
    resync: options.resync ?? {},
    afterStop: recordStop,
  })
  const { members: _members, bitmapClearDelayMs: _delay, resync: _resync, recover: _recover, standby: _standby, offloadWrites: _offload, workers, ...geometry } = options
  // The mirror serves every queue, or queue 0 with a worker's instance on each of the others.
  const target: TargetModule = { module: QUEUE_TARGET, primary: mirror }
  let device: Device
  try {
    if (claim === undefined) {
      device = await createDevice({ ...pickGeometry(geometry), size: superblock.size, target, ...(workers !== undefined ? { workers } : {}) })
    } else {
      device = await recoverArrayDevice(claim, target, options.ioTimeoutMs, workers)
    }
  } catch (err) {
    throw toUblkError(err)
  }
  const array = new Raid1Array(device, mirror)
  void mirror.startResync()
  return array
}

/** The serving options, checked before a member is read or written. */
function checkServing(options: AssembleRaid1Options): void {
  clearDelayOf(options)
  if (options.offloadWrites !== undefined && typeof options.offloadWrites !== 'boolean') {
    throw new UblkError('EINVAL', `offloadWrites must be true or false, got ${String(options.offloadWrites)}`)
  }
  if (options.workers !== undefined && typeof options.workers !== 'boolean') throw new UblkError('EINVAL', 'workers must be true or false')
}

function clearDelayOf(options: AssembleRaid1Options): number {
  const clearDelay = options.bitmapClearDelayMs ?? 5000
  if (!(typeof clearDelay === 'number' && clearDelay >= 10)) {
    throw new UblkError('EINVAL', `bitmapClearDelayMs must be at least 10, got ${String(clearDelay)}`)
  }
  return clearDelay
}

/** The array's device, taken over from its dead server under `claim` (its size checked before). */
function recoverArrayDevice(claim: RecoveryClaim, target: TargetModule, ioTimeoutMs: number | undefined, workers: boolean | undefined): Promise<Device> {
  return recoverDevice(claim.info.id, {
    target,
    claim,
    ...(ioTimeoutMs !== undefined ? { ioTimeoutMs } : {}),
    ...(workers !== undefined ? { workers } : {}),
  })
}

function pickGeometry(o: Record<string, unknown>): DeviceGeometry {
  const { id, queues, depth, maxIoBytes, logicalBlockSize, ioTimeoutMs, zeroCopy, batchIo, recovery } = o as DeviceGeometry
  const out: DeviceGeometry = {}
  if (id !== undefined) out.id = id
  if (queues !== undefined) out.queues = queues
  if (depth !== undefined) out.depth = depth
  if (maxIoBytes !== undefined) out.maxIoBytes = maxIoBytes
  if (logicalBlockSize !== undefined) out.logicalBlockSize = logicalBlockSize
  if (ioTimeoutMs !== undefined) out.ioTimeoutMs = ioTimeoutMs
  if (zeroCopy !== undefined) out.zeroCopy = zeroCopy
  if (batchIo !== undefined) out.batchIo = batchIo
  if (recovery !== undefined) out.recovery = recovery
  return out
}

/** After the device stopped: a clean superblock, and a clear bitmap when nothing is out of sync. */
async function recordStop(mirror: Mirror): Promise<void> {
  const sb: Superblock = { ...mirror.sb, events: mirror.sb.events + 1, clean: !mirror.dirtyResyncPending }
  for (const m of mirror.members) sb.slots[m.slot] = m.state
  if (!mirror.degraded && !mirror.dirtyResyncPending) mirror.bitmap.clearAll()
  const bits = mirror.bitmap.bits.slice(0, sb.bitmapBytes)
  for (const m of mirror.members) {
    if (m.state === 'faulty') continue
    try {
      await writeMetadata(m.path, { ...sb, slot: m.slot }, bits)
    } catch (err) {
      process.emitWarning(`RAID1: recording the stop on ${m.path} failed: ${(err as Error).message}`)
    }
  }
}
