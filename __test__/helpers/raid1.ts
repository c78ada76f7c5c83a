// Looks at RAID1 members from outside the library: data areas and the
// on-disk bitmap, read with plain file IO.
import { createHash } from 'node:crypto'
import { closeSync, openSync, readSync } from 'node:fs'

/** Offset of the data area on members of a small test array (1 MiB aligned). */
export const DATA_OFFSET = 1 << 20

/** MD5 of `length` bytes of `path` from `offset` (fast; see deviceAndFileDigests). */
export function digestRange(path: string, offset: number, length: number): string {
  const fd = openSync(path, 'r')
  try {
    const hash = createHash('md5')
    const buf = Buffer.alloc(1 << 20)
    for (let done = 0; done < length; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, length - done), offset + done)
      if (n === 0) break
      hash.update(buf.subarray(0, n))
      done += n
    }
    return hash.digest('hex')
  } finally {
    closeSync(fd)
  }
}

/** Bits set in the bitmap stored on a member (it starts at 4 KiB). */
export function bitsSetOnDisk(path: string, bitmapBytes: number): number {
  const fd = openSync(path, 'r')
  try {
    const bytes = Buffer.alloc(bitmapBytes)
    readSync(fd, bytes, 0, bitmapBytes, 4096)
    let n = 0
    for (const b of bytes) for (let v = b; v; v &= v - 1) n++
    return n
  } finally {
    closeSync(fd)
  }
}
