// The write-intent bitmap: one bit per chunk, set on disk before any write
// to the chunk starts, cleared lazily once the chunk has been idle.
//
// Bit changes are made in memory and written by one flush at a time; every
// writer that needs a bit waits for the first flush that starts after the
// bit was set, so a burst of batches shares flushes (group commit) and a
// flush never races another one for the same page.

/** A byte range on the device. */
export interface Extent {
  offset: number
  length: number
}

export interface BitmapStore {
  /**
   * Makes bitmap bytes [from, to) (whole pages) durable on every member
   * that keeps the bitmap; rejects if no member in sync took them.
   */
  persist(from: number, to: number): Promise<void>
}

interface Waiter {
  generation: number
  resolve(): void
  reject(err: unknown): void
}

const PAGE = 4096

export class WriteIntentBitmap {
  readonly chunks: number
  readonly chunkSize: number
  /** The bits, in memory the store writes from. */
  readonly bits: Uint8Array
  /** False: writes are only counted (for chunk locks); no bit is kept. */
  persistent = true
  /** When true (degraded, or a resync needs the bits), nothing is cleared. */
  keepBits: () => boolean = () => false
  /** Chunks written without `mark` (by a gated write route) since the last call. */
  takeRoutedWrites: () => ArrayLike<number> = () => []
  /** Stops writes that bypass `mark` to an idle chunk about to be cleared; false keeps its bit. */
  closeForClearing: (chunk: number) => boolean = () => true

  readonly #store: BitmapStore
  readonly #inflight: Uint32Array
  /** Sweep tick at which the chunk was last written. */
  readonly #touched: Uint32Array
  /** The flush generation that makes the chunk's bit durable. */
  readonly #needs: Uint32Array
  readonly #set = new Set<number>()
  readonly #idleWaiters = new Map<number, Array<() => void>>()
  #waiters: Waiter[] = []
  #started = 0
  #durable = 0
  #clearPending = false
  #dirtyFrom = Infinity
  #dirtyTo = -1
  #running = false
  #tick = 0
  /** A flush no member took: from then on no write may start. */
  #broken: unknown
  /** Flushes written so far, and how many of them only cleared bits. */
  flushes = 0
  clearFlushes = 0

  constructor(chunks: number, chunkSize: number, bits: Uint8Array, store: BitmapStore) {
    if (bits.byteLength * 8 < chunks) throw new RangeError('bitmap memory too small')
    this.chunks = chunks
    this.chunkSize = chunkSize
    this.bits = bits
    this.#store = store
    this.#inflight = new Uint32Array(chunks)
    this.#touched = new Uint32Array(chunks)
    this.#needs = new Uint32Array(chunks)
    for (let c = 0; c < chunks; c++) if (this.isSet(c)) this.#set.add(c)
  }

  isSet(chunk: number): boolean {
    return (this.bits[chunk >> 3]! & (1 << (chunk & 7))) !== 0
  }

  /** Chunks whose bit is set, ascending. */
  dirtyChunks(): number[] {
    return [...this.#set].sort((a, b) => a - b)
  }

  /** Passes of the lazy cleaner so far. */
  get sweeps(): number {
    return this.#tick
  }

  get dirtyCount(): number {
    return this.#set.size
  }

  /** First and last chunk an extent touches. */
  chunksOf(e: Extent): [number, number] {
    const first = Math.floor(e.offset / this.chunkSize)
    const last = Math.floor((e.offset + Math.max(e.length, 1) - 1) / this.chunkSize)
    return [first, Math.min(last, this.chunks - 1)]
  }

  /**
   * Counts the extents' writes in and sets their chunks' bits, and those
   * of the chunks `ahead` (first to last) with no write counted: where a
   * sequential writer goes next. Resolves once every one of those bits is
   * on disk (at once if they already are).
   */
  mark(extents: readonly Extent[], ahead?: readonly [number, number]): Promise<void> | undefined {
    let needed = 0
    for (const e of extents) {
      const [first, last] = this.chunksOf(e)
      for (let c = first; c <= last; c++) {
        this.#inflight[c]!++
        needed = Math.max(needed, this.#touch(c))
      }
    }
    if (ahead) for (let c = ahead[0]; c <= Math.min(ahead[1], this.chunks - 1); c++) needed = Math.max(needed, this.#touch(c))
    if (this.#broken) return Promise.reject(this.#broken)
    if (needed <= this.#durable) return undefined
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ generation: needed, resolve, reject })
      this.#kick()
    })
  }

  /** Sets a chunk's bit for a write about to start; the flush generation that makes it durable. */
  #touch(c: number): number {
    this.#touched[c] = this.#tick
    if (this.persistent && !this.isSet(c)) {
      this.bits[c >> 3]! |= 1 << (c & 7)
      this.#set.add(c)
      this.#needs[c] = this.#started + 1
      this.#pageChanged(c)
    }
    return this.#needs[c]!
  }

  /** Counts the extents' writes out (after `mark`, whatever the writes' outcome). */
  unmark(extents: readonly Extent[]): void {
    for (const e of extents) {
      const [first, last] = this.chunksOf(e)
      for (let c = first; c <= last; c++) {
        this.#inflight[c]!--
        this.#touched[c] = this.#tick
        if (this.#inflight[c] === 0) this.#wakeIdle(c)
      }
    }
  }

  /** Resolves once no write to `chunk` is in flight. */
  whenIdle(chunk: number): Promise<void> | undefined {
    if (this.#inflight[chunk] === 0) return undefined
    return new Promise<void>((resolve) => {
      const list = this.#idleWaiters.get(chunk) ?? []
      list.push(resolve)
      this.#idleWaiters.set(chunk, list)
    })
  }

  #wakeIdle(chunk: number): void {
    const list = this.#idleWaiters.get(chunk)
    if (!list) return
    this.#idleWaiters.delete(chunk)
    for (const wake of list) wake()
  }

  /**
   * One pass of the lazy cleaner: clears bits of chunks that have had no
   * write for a whole period (called once per period), unless bits are
   * being kept.
   */
  sweep(): void {
    this.#tick++
    const routed = this.takeRoutedWrites()
    for (let i = 0; i < routed.length; i++) this.#touched[routed[i]!] = this.#tick
    if (this.keepBits()) return
    let cleared = false
    for (const c of this.#set) {
      if (this.#inflight[c] === 0 && this.#needs[c]! <= this.#durable && this.#tick - this.#touched[c]! >= 2 && this.closeForClearing(c)) {
        this.bits[c >> 3]! &= ~(1 << (c & 7))
        this.#set.delete(c)
        this.#pageChanged(c)
        cleared = true
      }
    }
    if (cleared) {
      this.#clearPending = true
      this.#kick()
    }
  }

  /** Clears every bit in memory (the array is in sync and stopped). */
  clearAll(): void {
    this.bits.fill(0)
    this.#set.clear()
  }

  /** Sets a chunk's bit in memory only (a chunk known to be out of sync). */
  setInMemory(chunk: number): void {
    if (this.isSet(chunk)) return
    this.bits[chunk >> 3]! |= 1 << (chunk & 7)
    this.#set.add(chunk)
    this.#needs[chunk] = this.#started + 1
    this.#pageChanged(chunk)
  }

  #pageChanged(chunk: number): void {
    const page = Math.floor((chunk >> 3) / PAGE)
    this.#dirtyFrom = Math.min(this.#dirtyFrom, page)
    this.#dirtyTo = Math.max(this.#dirtyTo, page)
  }

  #kick(): void {
    if (this.#running) return
    this.#running = true
    void this.#flushLoop()
  }

  async #flushLoop(): Promise<void> {
    try {
      while (this.#clearPending || this.#waiters.some((w) => w.generation > this.#durable)) {
        const generation = ++this.#started
        const onlyClears = this.#clearPending && this.#waiters.length === 0
        this.#clearPending = false
        const from = this.#dirtyFrom
        const to = this.#dirtyTo
        this.#dirtyFrom = Infinity
        this.#dirtyTo = -1
        let failure: unknown
        if (to >= from) {
          try {
            await this.#store.persist(from * PAGE, (to + 1) * PAGE)
            this.flushes++
            if (onlyClears) this.clearFlushes++
          } catch (err) {
            failure = err
            this.#broken = err
          }
        }
        this.#durable = generation
        const waiting = this.#waiters
        this.#waiters = []
        for (const w of waiting) {
          if (w.generation > generation) this.#waiters.push(w)
          else if (failure) w.reject(failure)
          else w.resolve()
        }
      }
    } finally {
      this.#running = false
    }
  }
}
