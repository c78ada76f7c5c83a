// The mirror's side of its write gate: which chunks the queue threads
// write to every member without it. A chunk is open only while its bit is
// durable and no resync copy or read repair holds it.
import { setTimeout as sleep } from 'node:timers/promises'

import type { WriteGate } from '../target.js'

export class OpenChunks {
  readonly #gate: WriteGate
  /** Which chunks are open in the gate, kept here to spare native calls. */
  readonly #open: Uint8Array
  /** Routed writes that failed and reached the mirror. */
  #failuresSeen = 0

  constructor(gate: WriteGate) {
    this.#gate = gate
    this.#open = new Uint8Array(gate.chunks)
  }

  /** Opens chunks `first` to `last`, all but those `held` says a copy holds. */
  open(first: number, last: number, held: (chunk: number) => boolean): void {
    for (let c = first; c <= last; c++) {
      if (this.#open[c] || held(c)) continue
      this.#gate.open(c)
      this.#open[c] = 1
    }
  }

  /** Closes a chunk no routed write is in or entered lately; true once it is closed. */
  closeIfIdle(chunk: number): boolean {
    if (!this.#open[chunk]) return true
    if (!this.#gate.closeIfIdle(chunk)) return false
    this.#open[chunk] = 0
    return true
  }

  /** Closes a chunk and waits for the routed writes in it. */
  async closeAndDrain(chunk: number): Promise<void> {
    if (!this.#open[chunk]) return
    this.#open[chunk] = 0
    // Routed writes finish on their own within a few milliseconds; they
    // tell nobody, so this looks until none is left.
    for (let inFlight = this.#gate.close(chunk); inFlight > 0; inFlight = this.#gate.inFlight(chunk)) await sleep(1)
  }

  /** Chunks routed writes entered since the last call (see `WriteGate.takeTouched`). */
  takeTouched(): Uint32Array {
    return this.#gate.takeTouched()
  }

  /** A routed write that failed reached the mirror. */
  sawFailure(): void {
    this.#failuresSeen++
  }

  /** A routed write failed without reaching the mirror or a worker's instance (`seenElsewhere`): the device was stopping. */
  failureUnseen(seenElsewhere: number): boolean {
    return this.#gate.failures() > this.#failuresSeen + seenElsewhere
  }
}
