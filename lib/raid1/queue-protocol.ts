// What the mirror (on the device's thread: queue 0, the bitmap, the
// member states, resync) and the instances serving its other queues in
// workers (./queue-target.ts) share and say to each other. Member states
// are shared words, set before the IO that failed a member completes, so
// every queue stops writing to it at once; everything that changes the
// array's state is a request to the mirror.
import type { WireError } from '../workers/protocol.js'
import type { Extent } from './bitmap.js'
import { MAX_MEMBERS, type SlotState } from './superblock.js'

const STATES: readonly SlotState[] = ['empty', 'active', 'faulty', 'recovering', 'rebuilding']
/** The word after the slots' states: bumped whenever a member file is attached. */
const GENERATION = MAX_MEMBERS

/** Member states as every queue reads them, without asking. */
export class SharedMembers {
  readonly buffer: SharedArrayBuffer
  readonly #words: Int32Array

  constructor(buffer = new SharedArrayBuffer((MAX_MEMBERS + 1) * Int32Array.BYTES_PER_ELEMENT)) {
    this.buffer = buffer
    this.#words = new Int32Array(buffer)
  }

  state(slot: number): SlotState {
    return STATES[Atomics.load(this.#words, slot)] ?? 'empty'
  }

  setState(slot: number, state: SlotState): void {
    Atomics.store(this.#words, slot, STATES.indexOf(state))
  }

  /** Changes when a member's file is attached: queues then ask for the member list again. */
  get generation(): number {
    return Atomics.load(this.#words, GENERATION)
  }

  membershipChanged(): void {
    Atomics.add(this.#words, GENERATION, 1)
  }
}

/** Per queue, written by its worker: IOs that reached its JavaScript, and failed routed writes among them. */
export const COUNTER_FOREGROUND = 0
export const COUNTER_ROUTED_FAILURES = 1
export const QUEUE_COUNTERS = 2

export { fromWire, toWire, type WireError } from '../workers/protocol.js'

/** The array as a queue's instance needs it: where data starts, and which file is in which slot. */
export interface MemberList {
  dataOffset: number
  members: Array<{ slot: number; path: string }>
  generation: number
  shared: SharedArrayBuffer
  counters: SharedArrayBuffer
}

/** One copy's outcome, for the mirror to judge the members by. */
export interface CopyResult {
  slot: number
  /** The member was in sync when the copy was sent. */
  wasActive: boolean
  error?: WireError
}

/** Requests, each answered by a `Reply` with its id. */
export type Request = { id: number } & (
  | { kind: 'members' }
  /** Count writes in and have their chunks' bits on disk; answered with the mark's id once they are. */
  | { kind: 'mark'; extents: Extent[] }
  /** Copies of a write, flush, discard or write-zeroes failed: fail those members, and say whether the IO succeeded. */
  | { kind: 'judge'; what: string; results: CopyResult[] }
  /** Which member a read that no route served goes to (-1: none). */
  | { kind: 'reader'; offset: number }
  /** Rewrite a range a member failed to read, from a member that read it. */
  | { kind: 'repair'; offset: number; length: number; failed: number; good: number }
)

/** Notices, which get no answer. */
export type Notice = { kind: 'unmark'; mark: number } | { kind: 'readError'; slot: number }

export type Reply = { id: number } & ({ ok: true; value?: unknown } | { ok: false; error: WireError })

export const isRequest = (m: Request | Notice): m is Request => 'id' in m
