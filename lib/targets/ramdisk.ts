import type { Io, Target } from '../target.js'

const CHUNK = 1 << 20

/**
 * Keeps the device's bytes in memory, allocated a chunk at a time on first
 * write, so a large sparse disk costs only what was written.
 */
export function ramdiskTarget(): Target {
  const chunks = new Map<number, Uint8Array>()

  /** Calls `fn(chunk, chunkOffset, ioOffset, bytes)` for each chunk an IO spans. */
  function spans(io: Io, fn: (index: number, at: number, pos: number, n: number) => void): void {
    let pos = 0
    while (pos < io.length) {
      const abs = io.offset + pos
      const index = Math.floor(abs / CHUNK)
      const at = abs - index * CHUNK
      const n = Math.min(CHUNK - at, io.length - pos)
      fn(index, at, pos, n)
      pos += n
    }
  }

  function zero(io: Io): void {
    spans(io, (index, at, _pos, n) => {
      if (at === 0 && n === CHUNK) chunks.delete(index)
      else chunks.get(index)?.fill(0, at, at + n)
    })
  }

  return {
    name: 'ramdisk-ts',
    read(io) {
      spans(io, (index, at, pos, n) => {
        const chunk = chunks.get(index)
        if (chunk) io.buffer.set(chunk.subarray(at, at + n), pos)
        else io.buffer.fill(0, pos, pos + n)
      })
    },
    write(io) {
      spans(io, (index, at, pos, n) => {
        let chunk = chunks.get(index)
        if (!chunk) {
          chunk = new Uint8Array(CHUNK)
          chunks.set(index, chunk)
        }
        chunk.set(io.buffer.subarray(pos, pos + n), at)
      })
    },
    flush() {},
    discard: zero,
    writeZeroes: zero,
  }
}
