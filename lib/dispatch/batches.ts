// The batch hooks of a TypeScript target, driven by the runtime's write
// batches: the queue thread decides which writes form a batch and when all
// of them are done; here the batch's prologue runs before any of its IOs
// reaches its method, and its epilogue when the queue thread says so.
import type { Io, Target } from '../target.js'

/** A write, discard or write-zeroes ready for its method. */
export interface Member {
  io: Io
  /** A promise if the IO is answered later. */
  run(): Promise<void> | undefined
  fail(errno: number): void
}

interface Batch {
  /** IOs the queue thread put in the batch. */
  count: number
  /** IOs that arrived, ready or already answered. */
  arrived: number
  members: Member[]
  /** The array both hooks get, so a target can key its state by it. */
  ios: Io[]
  prologue?: Promise<unknown>
}

export class WriteBatches {
  readonly #target: Target
  readonly #errnoOf: (err: unknown) => number
  /** Open batches, by queue and batch number. */
  readonly #open: Array<Map<number, Batch>>

  constructor(target: Target, queues: number, errnoOf: (err: unknown) => number) {
    this.#target = target
    this.#errnoOf = errnoOf
    this.#open = Array.from({ length: queues }, () => new Map())
  }

  /** The queue thread announced batch `seq` of `count` IOs. */
  open(queue: number, seq: number, count: number): void {
    this.#open[queue]!.set(seq, { count, arrived: 0, members: [], ios: [] })
  }

  /**
   * An IO of batch `seq` arrived (`member` is undefined if it was answered
   * at once); returns false if no such batch was announced.
   */
  add(queue: number, seq: number, member: Member | undefined): boolean {
    const batch = this.#open[queue]!.get(seq)
    if (!batch) return false
    batch.arrived++
    if (member) {
      batch.members.push(member)
      batch.ios.push(member.io)
    }
    if (batch.arrived === batch.count) this.#start(batch)
    return true
  }

  /** Prologue first; the members wait for it, and fail with its errno. */
  #start(batch: Batch): void {
    const { members, ios } = batch
    if (members.length === 0) return
    batch.prologue = Promise.resolve()
      .then(() => this.#target.beforeWrites?.(ios))
      .then(
        () => Promise.all(members.map((m) => m.run())),
        (err: unknown) => {
          for (const m of members) m.fail(this.#errnoOf(err))
        },
      )
  }

  /** Every IO of batch `seq` completed: its epilogue runs. */
  done(queue: number, seq: number): void {
    const batch = this.#open[queue]!.get(seq)
    if (!batch) return
    this.#open[queue]!.delete(seq)
    if (batch.members.length === 0) return
    Promise.resolve(batch.prologue)
      .then(() => this.#target.afterWrites?.(batch.ios))
      .catch((err: unknown) => process.emitWarning(`ublk afterWrites failed: ${String(err)}`, 'UblkWarning'))
  }
}
