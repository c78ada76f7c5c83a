// Which chunks of the mirror writes may touch, and when: every write's
// chunks are marked in the write-intent bitmap before it starts, chunks
// whose bits are durable are opened in the write gate (the queue threads
// then write them without the mirror), and a resync copy or a read repair
// locks a chunk, holding writes off it until the copy is done.
import type { Extent, WriteIntentBitmap } from './bitmap.js'
import type { OpenChunks } from './open-chunks.js'

/** How far past a sequential writer's chunk its next chunks are marked (see `#aheadOf`), in bytes and at most in chunks. */
const MARK_AHEAD_BYTES = 8 << 20
const MARK_AHEAD_CHUNKS = 64

export class ChunkGuard {
  readonly #bitmap: WriteIntentBitmap
  /** Chunks whose bits are durable, which the queue threads write without the mirror; none without a gate. */
  readonly #open: OpenChunks | undefined
  /** Chunks a resync or a read repair holds: writes to them wait. */
  readonly #locks = new Map<number, Promise<void>>()

  constructor(bitmap: WriteIntentBitmap, open: OpenChunks | undefined) {
    this.#bitmap = bitmap
    this.#open = open
  }

  /**
   * Marks writes once no chunk they touch is locked (`onMarked` when they
   * are counted in); resolves once their bits are durable, and their
   * chunks are then open to routed writes.
   */
  mark(extents: Extent[], onMarked: () => void): Promise<void> | undefined {
    if (this.#locks.size > 0) return this.#markWhenUnlocked(extents, onMarked)
    return this.#mark(extents, onMarked)
  }

  /** Holds writes off a chunk and waits for those in flight; returns the release. */
  async lock(chunk: number): Promise<() => void> {
    for (let held = this.#locks.get(chunk); held; held = this.#locks.get(chunk)) await held
    let release!: () => void
    this.#locks.set(chunk, new Promise<void>((resolve) => (release = resolve)))
    await this.#open?.closeAndDrain(chunk)
    await this.#bitmap.whenIdle(chunk)
    return () => {
      this.#locks.delete(chunk)
      release()
    }
  }

  /**
   * Marks the writes' chunks, and the chunks a sequential writer reaches
   * next; once their bits are durable, later writes to them may bypass
   * the mirror.
   */
  #mark(extents: Extent[], onMarked: () => void): Promise<void> | undefined {
    onMarked()
    const ahead = this.#aheadOf(extents)
    const durable = this.#bitmap.mark(extents, ahead)
    if (!durable) {
      this.#openChunksOf(extents, ahead)
      return undefined
    }
    return durable.then(() => this.#openChunksOf(extents, ahead))
  }

  /**
   * The chunks after a large write that ends near its chunk's end (the
   * next such write crosses into the next chunk): a sequential writer's
   * next chunks, marked and opened in the same flush as its current one,
   * so that its writes go on routed instead of each chunk costing a trip
   * through the mirror and a flush of its own. A bit set for a chunk that
   * is never written only costs its copy in a resync. Stops at a locked
   * chunk.
   */
  #aheadOf(extents: readonly Extent[]): [number, number] | undefined {
    const { chunkSize, chunks } = this.#bitmap
    let first = -1
    for (const e of extents) {
      const end = e.offset + e.length
      const next = Math.ceil(end / chunkSize)
      if (e.length * 4 >= chunkSize && next * chunkSize - end < e.length) first = Math.max(first, next)
    }
    if (first < 0 || first >= chunks) return undefined
    const limit = Math.min(chunks - 1, first + Math.min(MARK_AHEAD_CHUNKS, Math.ceil(MARK_AHEAD_BYTES / chunkSize)) - 1)
    let last = first - 1
    while (last < limit && !this.#locks.has(last + 1)) last++
    return last >= first ? [first, last] : undefined
  }

  /** Opens the extents' chunks and those `ahead` in the gate, all but those a resync or repair holds. */
  #openChunksOf(extents: Extent[], ahead?: [number, number]): void {
    const open = this.#open
    if (!open) return
    const held = (c: number): boolean => this.#locks.has(c)
    for (const e of extents) {
      const [first, last] = this.#bitmap.chunksOf(e)
      open.open(first, last, held)
    }
    if (ahead) open.open(ahead[0], ahead[1], held)
  }

  /**
   * Marks the writes once no chunk they touch is locked. The check and the
   * mark happen in one synchronous step: a chunk lock taken in between
   * (a resync copy, a read repair) would otherwise find the chunk idle and
   * copy it while these writes land on it.
   */
  async #markWhenUnlocked(extents: Extent[], onMarked: () => void): Promise<void> {
    for (;;) {
      const held = this.#lockOn(extents)
      if (!held) return this.#mark(extents, onMarked)
      await held
    }
  }

  /** A lock held on a chunk the extents touch, if any. */
  #lockOn(extents: Extent[]): Promise<void> | undefined {
    for (const e of extents) {
      const [first, last] = this.#bitmap.chunksOf(e)
      for (let c = first; c <= last; c++) {
        const held = this.#locks.get(c)
        if (held) return held
      }
    }
    return undefined
  }
}
