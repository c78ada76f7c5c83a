// Member metadata read and written while no device runs (create, assemble,
// after stop), through ordinary file IO. While the device runs, metadata
// goes through the queue rings instead.
import { promises as fs } from 'node:fs'

import { UblkError } from '../errors.js'
import { BITMAP_OFFSET, decodeSuperblock, encodeSuperblock, SUPERBLOCK_BYTES, type Superblock } from './superblock.js'

function fsError(err: unknown, what: string): UblkError {
  const code = (err as { code?: unknown }).code
  return new UblkError(typeof code === 'string' ? code : 'EIO', `${what}: ${(err as Error).message}`, { cause: err })
}

/** Bytes a member offers: a file's length or a block device's capacity. */
export async function memberCapacity(path: string): Promise<{ bytes: number; blockDevice: boolean }> {
  let stat
  try {
    stat = await fs.stat(path)
  } catch (err) {
    throw fsError(err, `member ${path}`)
  }
  if (stat.isFile()) return { bytes: stat.size, blockDevice: false }
  if (!stat.isBlockDevice()) throw new UblkError('EINVAL', `member ${path} is neither a file nor a block device`)
  const major = Math.floor(stat.rdev / 256) & 0xfff
  const minor = (stat.rdev & 0xff) | ((Math.floor(stat.rdev / 4096) & 0xfff00) >>> 0)
  const sectors = await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')
  return { bytes: Number(sectors.trim()) * 512, blockDevice: true }
}

async function withFile<T>(path: string, flags: string, use: (fh: fs.FileHandle) => Promise<T>): Promise<T> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(path, flags)
  } catch (err) {
    throw fsError(err, `open member ${path}`)
  }
  try {
    return await use(fh)
  } catch (err) {
    throw err instanceof UblkError ? err : fsError(err, `member ${path}`)
  } finally {
    await fh.close()
  }
}

/** The raw superblock area (4 KiB), whatever it holds. */
export function readSuperblockBytes(path: string): Promise<Uint8Array> {
  return withFile(path, 'r', async (fh) => {
    const bytes = new Uint8Array(SUPERBLOCK_BYTES)
    await fh.read(bytes, 0, SUPERBLOCK_BYTES, 0)
    return bytes
  })
}

export async function readSuperblock(path: string): Promise<Superblock> {
  return decodeSuperblock(await readSuperblockBytes(path), path)
}

export function readBitmap(path: string, sb: Superblock): Promise<Uint8Array> {
  return withFile(path, 'r', async (fh) => {
    const bytes = new Uint8Array(sb.bitmapBytes)
    await fh.read(bytes, 0, sb.bitmapBytes, BITMAP_OFFSET)
    return bytes
  })
}

/** Writes a superblock and, when given, the bitmap; durable on return. */
export function writeMetadata(path: string, sb: Superblock, bitmap?: Uint8Array): Promise<void> {
  return withFile(path, 'r+', async (fh) => {
    const block = new Uint8Array(SUPERBLOCK_BYTES)
    encodeSuperblock(sb, block)
    if (bitmap) await fh.write(bitmap, 0, sb.bitmapBytes, BITMAP_OFFSET)
    await fh.write(block, 0, SUPERBLOCK_BYTES, 0)
    await fh.datasync()
  })
}

/**
 * Zeroes a regular file's data area without writing it: cutting the file
 * back to its metadata and extending it again leaves a hole that reads as
 * zeroes, so new members start out identical.
 */
export async function zeroFileData(path: string, dataOffset: number): Promise<void> {
  await withFile(path, 'r+', async (fh) => {
    const { size } = await fh.stat()
    await fh.truncate(dataOffset)
    await fh.truncate(size)
    await fh.datasync()
  })
}

/** Whether the device starts with anything that looks like our superblock. */
export async function hasSuperblock(path: string): Promise<boolean> {
  const bytes = await readSuperblockBytes(path)
  return Buffer.from(bytes.subarray(0, 8)).toString('latin1') === 'UBLKRAID'
}
