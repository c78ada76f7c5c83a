// The RAID1 target without a kernel: the Mirror over in-memory members
// whose reads and writes complete after random delays, as the queue rings'
// do. A resync copying chunks while write batches land on them must end
// with both members holding the same data, however the two interleave.
// (With the chunk-lock check and the bitmap mark a microtask apart, as
// they once were, 6 of these 40 seeds end with members that differ.)
// Writes to chunks the mirror opened in its write gate bypass it, as the
// queue threads' gated write route does: `RoutedWrites` plays that part,
// with the rules of the native gate (unit-tested in Rust).
import { MessageChannel, type MessagePort } from 'node:worker_threads'

import test, { type ExecutionContext } from 'ava'

import type { BackingFile, Io, StagedIoOptions, StagingBuffer, TargetContext, WriteErrorHandler, WriteGate, WriteRoute } from '../lib/index.ts'
import { Mirror, type Member } from '../lib/raid1/mirror.ts'
import { MirrorQueue } from '../lib/raid1/queue-target.ts'
import { newSuperblock } from '../lib/raid1/superblock.ts'

const CHUNK = 4096
const SIZE = 64 * CHUNK

/**
 * Backend IO completing in any order: each operation waits for a turn of
 * the event loop, and every turn completes a random part of what waits,
 * all at once, and runs `onTurn` in the same step. Completions and new
 * write batches then interleave as they do when the bridge hands a batch
 * of completions and new IOs to JavaScript together.
 */
class Turns {
  onTurn: () => void = () => {}
  #waiting: Array<() => void> = []
  #scheduled = false
  readonly #random: () => number

  constructor(random: () => number) {
    this.#random = random
  }

  later(): Promise<void> {
    return new Promise((resolve) => {
      this.#waiting.push(resolve)
      this.#schedule()
    })
  }

  #schedule(): void {
    if (this.#scheduled) return
    this.#scheduled = true
    setImmediate(() => this.#turn())
  }

  #turn(): void {
    this.#scheduled = false
    const now: Array<() => void> = []
    const next: Array<() => void> = []
    for (const resolve of this.#waiting) (this.#random() < 0.6 ? now : next).push(resolve)
    this.#waiting = next
    for (let i = now.length - 1; i > 0; i--) {
      const j = Math.floor(this.#random() * (i + 1))
      ;[now[i], now[j]] = [now[j]!, now[i]!]
    }
    const half = Math.floor(this.#random() * (now.length + 1))
    for (const resolve of now.slice(0, half)) resolve()
    this.onTurn()
    for (const resolve of now.slice(half)) resolve()
    if (this.#waiting.length > 0) this.#schedule()
  }
}

/** A deterministic generator, so a failure can be replayed from its seed. */
function seeded(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

/**
 * The queue threads' side of a gated write route: a write whose every chunk
 * is open goes to the route's files without the mirror, counted in flight
 * in its chunks until every copy landed.
 */
class RoutedWrites implements WriteGate {
  readonly chunkBytes = CHUNK
  readonly chunks = SIZE / CHUNK
  route: WriteRoute | undefined
  served = 0
  readonly #open = new Uint8Array(this.chunks)
  readonly #inFlight = new Uint32Array(this.chunks)
  readonly #touched = new Uint8Array(this.chunks)

  open(first: number, last = first): void {
    for (let c = first; c <= last; c++) this.#open[c] = 1
  }
  close(chunk: number): number {
    this.#open[chunk] = 0
    return this.#inFlight[chunk]!
  }
  inFlight(chunk: number): number {
    return this.#inFlight[chunk]!
  }
  closeIfIdle(chunk: number): boolean {
    if (this.#inFlight[chunk] || this.#touched[chunk]) return !this.#open[chunk] && !this.#inFlight[chunk]
    this.#open[chunk] = 0
    return true
  }
  takeTouched(): Uint32Array {
    const touched = [...this.#touched.keys()].filter((c) => this.#touched[c])
    this.#touched.fill(0)
    return Uint32Array.from(touched)
  }
  failures(): number {
    return 0
  }

  /** Serves the write if the route takes it; false sends it to the mirror. */
  tryWrite(data: Map<string, Uint8Array>, turns: Turns, chunk: number, fill: number): Promise<void> | false {
    const route = this.route
    if (!route?.gated || !this.#open[chunk]) return false
    this.#inFlight[chunk]!++
    this.#touched[chunk] = 1
    this.served++
    return (async () => {
      await Promise.all(
        route.files!.map(async (f) => {
          await turns.later()
          data.get(f.path)!.fill(fill, route.fileOffset! + chunk * CHUNK, route.fileOffset! + (chunk + 1) * CHUNK)
        }),
      )
      this.#inFlight[chunk]!--
    })()
  }
}

/** Member files in memory, and a target context whose IO on them takes random time. */
function memoryContext(turns: Turns) {
  const data = new Map<string, Uint8Array>()
  const routed = new RoutedWrites()
  const file = (path: string): BackingFile => ({ path, size: data.get(path)!.byteLength, direct: true, readOnly: false, blockDevice: false })
  const bytesOf = (f: BackingFile) => data.get(f.path)!
  const ctx = {
    async openFile(path: string) {
      return file(path)
    },
    allocBuffer(size: number): StagingBuffer {
      return { bytes: new Uint8Array(size), free() {} }
    },
    async read(f: BackingFile, buffer: StagingBuffer, fileOffset: number, options: StagedIoOptions = {}) {
      const at = options.bufOffset ?? 0
      const length = options.length ?? buffer.bytes.byteLength - at
      await turns.later()
      buffer.bytes.set(bytesOf(f).subarray(fileOffset, fileOffset + length), at)
      return length
    },
    async write(f: BackingFile, buffer: StagingBuffer, fileOffset: number, options: StagedIoOptions = {}) {
      const at = options.bufOffset ?? 0
      const length = options.length ?? buffer.bytes.byteLength - at
      await turns.later()
      bytesOf(f).set(buffer.bytes.subarray(at, at + length), fileOffset)
      return length
    },
    async fdatasync() {
      await turns.later()
    },
    async sleep(ms: number) {
      await new Promise((resolve) => setTimeout(resolve, ms))
    },
    routeReads() {},
    routedReads: () => 0,
    routeWrites(route: WriteRoute | undefined) {
      routed.route = route
    },
    routedWrites: () => routed.served,
    writeGate: () => routed,
  }
  return { data, ctx: ctx as unknown as TargetContext, routed }
}

/** A write IO as the mirror sees it, and when the queue thread would complete it. */
type WriteIo = Io & { done: Promise<void> }

/**
 * A write IO of `length` bytes at `offset` carrying `fill`, onto the members
 * in `data`; its `mirror` lands each copy on its own turn, as the queue
 * thread would, and `done` settles as the IO would be completed.
 */
function writeIo(data: Map<string, Uint8Array>, offset: number, length: number, fill: number, turns: Turns): WriteIo {
  const buffer = new Uint8Array(length).fill(fill)
  const io: Partial<WriteIo> = {
    op: 'write',
    offset,
    length,
    fua: false,
    queue: 0,
    done: Promise.resolve(),
    async writeTo(f: BackingFile, fileOffset: number) {
      await turns.later()
      data.get(f.path)!.set(buffer, fileOffset)
      return length
    },
    mirror(files: readonly BackingFile[], fileOffset: number, onWriteError?: WriteErrorHandler) {
      io.done = (async () => {
        const outcomes = await Promise.allSettled(files.map((f) => io.writeTo!(f, fileOffset)))
        const failures = outcomes.flatMap((o, i) => (o.status === 'rejected' ? [{ file: files[i]!, error: o.reason as Error }] : []))
        if (failures.length === 0) return
        if (!onWriteError) throw failures[0]!.error
        await onWriteError(failures)
      })()
    },
  }
  return io as WriteIo
}

/** Runs the write method of the mirror (or of a queue's instance) on `io` and waits until the IO would complete. */
async function written(mirror: Mirror | MirrorQueue, io: WriteIo): Promise<void> {
  await mirror.write(io)
  await io.done
}

for (let seed = 1; seed <= 40; seed++) {
  test(`seed ${seed}: a dirty resync under write batches leaves the members identical`, (t) => resyncUnderWrites(t, seed, false))
}

// The instance serving queue 1 in a worker, here on this thread, over a
// real message channel: its marks, members and writes go through the
// mirror's links, whose answers take turns of the event loop of their own.
for (let seed = 1; seed <= 20; seed++) {
  test(`seed ${seed}: a dirty resync under write batches from queue 0 and from a worker's instance leaves the members identical`, (t) =>
    resyncUnderWrites(t, seed, true))
}

async function resyncUnderWrites(t: ExecutionContext, seed: number, withQueue: boolean): Promise<void> {
  {
    const random = seeded(seed)
    const turns = new Turns(random)
    const { data, ctx, routed } = memoryContext(turns)
    const sb = { ...newSuperblock(SIZE, CHUNK, 2, true), clean: false }
    for (const path of ['a', 'b']) data.set(path, new Uint8Array(sb.dataOffset + SIZE))
    // The members differ in every chunk, as after a crash that marked them all.
    data.get('a')!.fill(1, sb.dataOffset)
    const members: Member[] = ['a', 'b'].map((path, slot) => ({ slot, path, state: 'active', readErrors: 0, writeErrors: 0, repairedReads: 0 }))
    const bitmap = new Uint8Array(sb.bitmapBytes).fill(0xff)
    const mirror = new Mirror({ superblock: sb, members, bitmap, unclean: true, bitmapClearDelayMs: 10, resync: { maxBytesPerSec: 2 ** 40, minBytesPerSec: 2 ** 40 } })
    let queue: MirrorQueue | undefined
    let queuePort: MessagePort | undefined
    if (withQueue) {
      const { port1, port2 } = new MessageChannel()
      port1.unref()
      mirror.connectQueue(1, port1)
      queue = new MirrorQueue(port2)
      queuePort = port2
    }
    await mirror.open(ctx)
    await queue?.open(ctx)
    // Write batches while the resync copies: one or two IOs on neighbouring
    // chunks, started in the same step as backend completions. No two
    // writes to a chunk are in flight at once: overlapping writes in flight
    // together may land in any order, on a mirror as on a disk.
    const busy = new Set<number>()
    const batches: Array<Promise<void>> = []
    const startBatch = () => {
      const first = Math.floor(random() * (SIZE / CHUNK - 1))
      const chunks = [first, first + 1].slice(0, 1 + Math.floor(random() * 2)).filter((c) => !busy.has(c))
      for (const c of chunks) busy.add(c)
      const ios: WriteIo[] = []
      const bypassing: Array<Promise<void>> = []
      for (const chunk of chunks) {
        const fill = 2 + Math.floor(random() * 250)
        const bypass = routed.tryWrite(data, turns, chunk, fill)
        if (bypass) bypassing.push(bypass)
        else ios.push(writeIo(data, chunk * CHUNK, CHUNK, fill, turns))
      }
      // Half the batches come on queue 1, when it has its own instance.
      const target = queue && random() < 0.5 ? queue : mirror
      batches.push(
        (async () => {
          if (ios.length > 0) {
            await target.beforeWrites(ios)
            await Promise.all(ios.map((io) => written(target, io)))
            target.afterWrites(ios)
          }
          await Promise.all(bypassing)
          for (const c of chunks) busy.delete(c)
        })(),
      )
    }
    let started = 0
    turns.onTurn = () => {
      for (let n = Math.floor(random() * 3); n > 0 && started < 200; n--, started++) startBatch()
    }
    const resynced = mirror.startResync()
    while (started < 200) await turns.later()
    await Promise.all(batches)
    await resynced
    await mirror.whenResynced()
    t.like(mirror.lastResync, { kind: 'dirty', total: SIZE / CHUNK, done: SIZE / CHUNK })
    const [a, b] = ['a', 'b'].map((p) => data.get(p)!.subarray(sb.dataOffset))
    const differing = []
    for (let c = 0; c < SIZE / CHUNK; c++) {
      if (!a!.subarray(c * CHUNK, (c + 1) * CHUNK).every((v, i) => v === b![c * CHUNK + i])) differing.push(c)
    }
    t.deepEqual(differing, [], 'chunks that differ between the members')
    routedTotal += routed.served
    // The mirror records its stop once the queue's worker is gone: here, once its port closes.
    const closed = mirror.close()
    queuePort?.close()
    await closed
  }
}

let routedTotal = 0
test.after('writes bypassed the mirror through the gate', () => {
  if (routedTotal === 0) throw new Error('no write took the gated route: the test would not see its races')
})

test('a write cut short on one member (the device stopping) leaves the array to be resynced, not clean', async (t) => {
  const random = seeded(99)
  const turns = new Turns(random)
  const { data, ctx } = memoryContext(turns)
  const sb = newSuperblock(SIZE, CHUNK, 2, true)
  for (const path of ['a', 'b']) data.set(path, new Uint8Array(sb.dataOffset + SIZE))
  const members: Member[] = ['a', 'b'].map((path, slot) => ({ slot, path, state: 'active', readErrors: 0, writeErrors: 0, repairedReads: 0 }))
  const mirror = new Mirror({ superblock: sb, members, bitmap: new Uint8Array(sb.bitmapBytes), unclean: false, bitmapClearDelayMs: 10, resync: {} })
  await mirror.open(ctx)
  t.false(mirror.dirtyResyncPending)
  const io = writeIo(data, 3 * CHUNK, CHUNK, 7, turns)
  const landed = io.writeTo.bind(io)
  // Member b's copy is cancelled, as the queue does when the device stops.
  ;(io as { writeTo: Io['writeTo'] }).writeTo = (file, fileOffset) =>
    file.path === 'b' ? Promise.reject(Object.assign(new Error('cancelled'), { code: 'ECANCELED' })) : landed(file, fileOffset)
  await mirror.beforeWrites([io])
  await t.throwsAsync(written(mirror, io), { code: 'ECANCELED' })
  mirror.afterWrites([io])
  t.true(mirror.dirtyResyncPending, 'the stop will be recorded unclean, with the bit kept')
  t.deepEqual(mirror.memberStatus().map((m) => m.state), ['active', 'active'], 'a cancel says nothing about the member')
  await mirror.close()
})
