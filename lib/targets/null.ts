import type { Target } from '../target.js'

/** Stores nothing: reads leave the buffer as it is, writes are dropped. */
export function nullTarget(): Target {
  return {
    name: 'null-ts',
    read() {},
    write() {},
    flush() {},
    discard() {},
    writeZeroes() {},
  }
}
