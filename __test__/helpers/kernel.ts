// Reads what the kernel itself says about a block device, independent of
// this library's own view.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { basename } from 'node:path'

export interface BlockDeviceFacts {
  sizeBytes: number
  logicalBlockSize: number
  physicalBlockSize: number
  hwQueues: number
  maxSectorsKb: number
  discardMaxBytes: number
  readOnly: boolean
}

export function sysfsBlock(devPath: string): BlockDeviceFacts {
  const dir = `/sys/block/${basename(devPath)}`
  const read = (file: string): number => Number(readFileSync(`${dir}/${file}`, 'utf8').trim())
  return {
    sizeBytes: read('size') * 512,
    logicalBlockSize: read('queue/logical_block_size'),
    physicalBlockSize: read('queue/physical_block_size'),
    hwQueues: readdirSync(`${dir}/mq`).length,
    maxSectorsKb: read('queue/max_sectors_kb'),
    discardMaxBytes: read('queue/discard_max_bytes'),
    readOnly: read('ro') === 1,
  }
}

/** True once neither the block nor the char device node exists. */
export function deviceGone(id: number): boolean {
  return (
    !existsSync(`/dev/ublkb${id}`) &&
    !existsSync(`/dev/ublkc${id}`) &&
    !existsSync(`/sys/block/ublkb${id}`) &&
    !existsSync(`/sys/class/ublk-char/ublkc${id}`)
  )
}

export function requireUblk(): void {
  if (!existsSync('/dev/ublk-control')) {
    throw new Error(
      'these tests need a kernel with ublk (/dev/ublk-control); `npm test` runs them in a VM that has one',
    )
  }
}

/** Reads and writes the block layer has in flight on `devPath` now. */
export function inFlight(devPath: string): number {
  const [reads, writes] = readFileSync(`/sys/block/${basename(devPath)}/inflight`, 'utf8').trim().split(/\s+/).map(Number)
  return (reads ?? 0) + (writes ?? 0)
}

/** The names of the threads of process `pid` (default: this one), as the kernel lists them. */
export function threadNames(pid: number | 'self' = 'self'): string[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim())
}

/**
 * The queue threads of a process, as the runtime names them
 * (`ublk<device>-q<queue>`): of device `id`, or of any device.
 */
export function queueThreadNames(id?: number, pid: number | 'self' = 'self'): string[] {
  const device = id === undefined ? '\\d+' : String(id)
  const name = new RegExp(`^ublk${device}-q\\d+$`)
  return threadNames(pid).filter((n) => name.test(n))
}

/**
 * Where a test's own reader reads, in 4 KiB blocks from the start of a
 * device of at least 2 MiB: away from what the kernel's partition scan
 * reads near the start and the end, which may still run after the device
 * started (7.x).
 */
export const READER_SKIP = 256

/** Whether an IO at `offset` is in the MiB a reader from `READER_SKIP` reads. */
export function readersRange(offset: number): boolean {
  return offset >= READER_SKIP * 4096 && offset < READER_SKIP * 4096 + (1 << 20)
}
