// The on-disk metadata every RAID1 member carries at its start: a 4 KiB
// superblock, then the write-intent bitmap, then the data.
//
//   0              superblock (4 KiB, checksummed)
//   4 KiB          bitmap: one bit per chunk, padded to whole 4 KiB pages
//   dataOffset     the array's data (1 MiB aligned)
import { createHash, randomUUID } from 'node:crypto'

import { UblkError } from '../errors.js'

export const SUPERBLOCK_BYTES = 4096
export const BITMAP_OFFSET = SUPERBLOCK_BYTES
export const PAGE = 4096
const DATA_ALIGN = 1 << 20
const MAGIC = 'UBLKRAID'
const VERSION = 1
export const MAX_MEMBERS = 8
const CHECKSUM_AT = SUPERBLOCK_BYTES - 32

/** A member's part in the array, as every superblock records it for every slot. */
export type SlotState =
  /** No member in this slot. */
  | 'empty'
  /** Holds the array's data. */
  | 'active'
  /** Failed or missing: gets no IO; the bitmap keeps what it missed. */
  | 'faulty'
  /** Catching up on the chunks the bitmap marks. */
  | 'recovering'
  /** Catching up on every chunk (a new member). */
  | 'rebuilding'

const SLOT_CODES: SlotState[] = ['empty', 'active', 'faulty', 'recovering', 'rebuilding']

export interface Superblock {
  uuid: string
  /** The array's size in bytes. */
  size: number
  chunkSize: number
  dataOffset: number
  bitmapBytes: number
  /** This member's slot. */
  slot: number
  /** Bumped on every superblock update; the freshest member has the most. */
  events: number
  /** The array was stopped cleanly: no write can be half done. */
  clean: boolean
  /** The array keeps a write-intent bitmap. */
  bitmap: boolean
  createdMs: number
  slots: SlotState[]
}

/** Where things are on a member, from the array's size and chunk size. */
export function layoutFor(size: number, chunkSize: number): { chunks: number; bitmapBytes: number; dataOffset: number } {
  const chunks = Math.ceil(size / chunkSize)
  const bitmapBytes = Math.ceil(Math.ceil(chunks / 8) / PAGE) * PAGE
  const dataOffset = Math.ceil((BITMAP_OFFSET + bitmapBytes) / DATA_ALIGN) * DATA_ALIGN
  return { chunks, bitmapBytes, dataOffset }
}

export function newSuperblock(size: number, chunkSize: number, members: number, bitmap: boolean): Superblock {
  const { bitmapBytes, dataOffset } = layoutFor(size, chunkSize)
  return {
    uuid: randomUUID(),
    size,
    chunkSize,
    dataOffset,
    bitmapBytes,
    slot: 0,
    events: 1,
    clean: true,
    bitmap,
    createdMs: Date.now(),
    slots: Array.from({ length: MAX_MEMBERS }, (_, i): SlotState => (i < members ? 'active' : 'empty')),
  }
}

function checksum(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes.subarray(0, CHECKSUM_AT)).digest()
}

/** Writes `sb` into `out` (4 KiB). */
export function encodeSuperblock(sb: Superblock, out: Uint8Array): void {
  if (out.byteLength < SUPERBLOCK_BYTES) throw new RangeError('a superblock needs 4 KiB')
  const bytes = out.subarray(0, SUPERBLOCK_BYTES)
  bytes.fill(0)
  const view = new DataView(bytes.buffer, bytes.byteOffset, SUPERBLOCK_BYTES)
  bytes.set(Buffer.from(MAGIC, 'latin1'), 0)
  view.setUint32(8, VERSION, true)
  bytes.set(Buffer.from(sb.uuid.replaceAll('-', ''), 'hex'), 16)
  view.setBigUint64(32, BigInt(sb.size), true)
  view.setUint32(40, sb.chunkSize, true)
  view.setUint32(44, sb.bitmapBytes, true)
  view.setBigUint64(48, BigInt(sb.dataOffset), true)
  view.setUint32(56, sb.slot, true)
  view.setUint32(60, (sb.clean ? 1 : 0) | (sb.bitmap ? 2 : 0), true)
  view.setBigUint64(64, BigInt(sb.events), true)
  view.setBigUint64(72, BigInt(sb.createdMs), true)
  sb.slots.forEach((state, i) => view.setUint8(80 + i, SLOT_CODES.indexOf(state)))
  bytes.set(checksum(bytes), CHECKSUM_AT)
}

/**
 * Reads a superblock; throws EINVAL for a device that is not a member of
 * any array and EBADMSG for one whose superblock is damaged.
 */
export function decodeSuperblock(bytes: Uint8Array, where: string): Superblock {
  if (bytes.byteLength < SUPERBLOCK_BYTES || Buffer.from(bytes.subarray(0, 8)).toString('latin1') !== MAGIC) {
    throw new UblkError('EINVAL', `${where} is not a RAID1 member (no superblock)`)
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, SUPERBLOCK_BYTES)
  if (!checksum(bytes).equals(bytes.subarray(CHECKSUM_AT, SUPERBLOCK_BYTES))) {
    throw new UblkError('EBADMSG', `${where}: the RAID1 superblock is damaged (checksum mismatch)`)
  }
  const version = view.getUint32(8, true)
  if (version !== VERSION) {
    throw new UblkError('EINVAL', `${where}: RAID1 superblock version ${version} is not supported`)
  }
  const hex = Buffer.from(bytes.subarray(16, 32)).toString('hex')
  const slots = Array.from({ length: MAX_MEMBERS }, (_, i): SlotState => SLOT_CODES[view.getUint8(80 + i)] ?? 'empty')
  const sb: Superblock = {
    uuid: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    size: Number(view.getBigUint64(32, true)),
    chunkSize: view.getUint32(40, true),
    bitmapBytes: view.getUint32(44, true),
    dataOffset: Number(view.getBigUint64(48, true)),
    slot: view.getUint32(56, true),
    clean: (view.getUint32(60, true) & 1) !== 0,
    bitmap: (view.getUint32(60, true) & 2) !== 0,
    events: Number(view.getBigUint64(64, true)),
    createdMs: Number(view.getBigUint64(72, true)),
    slots,
  }
  const layout = layoutFor(sb.size, sb.chunkSize)
  if (
    sb.slot >= MAX_MEMBERS ||
    sb.chunkSize === 0 ||
    layout.bitmapBytes !== sb.bitmapBytes ||
    layout.dataOffset !== sb.dataOffset
  ) {
    throw new UblkError('EBADMSG', `${where}: the RAID1 superblock is inconsistent`)
  }
  return sb
}
