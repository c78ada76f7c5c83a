// Copies chunks from a member in sync to members that are not, one chunk
// at a time, paced so that foreground IO goes on.

export type ResyncKind =
  /** After a crash: the chunks the bitmap marks, between members in sync. */
  | 'dirty'
  /** A member that was away: the chunks written since (the bitmap). */
  | 'recovery'
  /** A new member: every chunk. */
  | 'full'

export interface ResyncProgress {
  kind: ResyncKind
  /** Chunks to copy, and copied so far. */
  total: number
  done: number
  bytesCopied: number
  startedMs: number
  /** Set when the resync stopped on an error. */
  error?: string
}

export interface ResyncSpeed {
  /** Bytes per second when the device is idle (default 256 MiB/s). */
  maxBytesPerSec?: number
  /** Bytes per second while foreground IO is going on (default 16 MiB/s). */
  minBytesPerSec?: number
}

export interface ResyncWork {
  kind: ResyncKind
  chunks: number[]
  /** Copies one chunk; returns the bytes copied. */
  copy(chunk: number): Promise<number>
  /** A count that moves whenever foreground IO happens. */
  foregroundIos(): number
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export class Resync {
  readonly progress: ResyncProgress
  /** Chunks not copied yet (reads of them must come from the source). */
  readonly pending: Set<number>
  #aborted = false
  readonly #work: ResyncWork
  readonly #speed: Required<ResyncSpeed>

  constructor(work: ResyncWork, speed: ResyncSpeed = {}) {
    this.#work = work
    this.#speed = {
      maxBytesPerSec: speed.maxBytesPerSec ?? 256 << 20,
      minBytesPerSec: speed.minBytesPerSec ?? 16 << 20,
    }
    this.pending = new Set(work.chunks)
    this.progress = { kind: work.kind, total: work.chunks.length, done: 0, bytesCopied: 0, startedMs: Date.now() }
  }

  abort(): void {
    this.#aborted = true
  }

  get aborted(): boolean {
    return this.#aborted
  }

  /** Runs to the end; resolves true when every chunk was copied. */
  async run(): Promise<boolean> {
    let windowStart = Date.now()
    let windowBytes = 0
    let seenIos = this.#work.foregroundIos()
    for (const chunk of this.#work.chunks) {
      if (this.#aborted) return false
      let bytes: number
      try {
        bytes = await this.#work.copy(chunk)
      } catch (err) {
        if (!this.#aborted) this.progress.error = (err as Error).message
        return false
      }
      this.pending.delete(chunk)
      this.progress.done++
      this.progress.bytesCopied += bytes
      windowBytes += bytes
      // Pace: the slow rate while foreground IO happened since the last chunk.
      const ios = this.#work.foregroundIos()
      const busy = ios !== seenIos
      seenIos = ios
      const rate = busy ? this.#speed.minBytesPerSec : this.#speed.maxBytesPerSec
      const due = (windowBytes / rate) * 1000 - (Date.now() - windowStart)
      if (due > 1) await sleep(Math.min(due, 1000))
      if (Date.now() - windowStart > 1000) {
        windowStart = Date.now()
        windowBytes = 0
      }
    }
    return !this.#aborted
  }
}
