import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** A sparse scratch file of `size` bytes in /tmp, named for this process. */
export function scratchFile(name: string, size: number, head = ''): string {
  const file = `/tmp/ublk-${name}-${process.pid}.img`
  writeFileSync(file, head)
  truncateSync(file, size)
  return file
}

/**
 * MD5 of a block device (read by `md5sum` in a child process, so the
 * serving event loop stays free) and of a file, for "the file holds exactly
 * what went through the device". MD5 because it is six times faster than
 * SHA-256 on the VM's emulated CPU, and these digests only compare data
 * nobody crafted to collide.
 */
export async function deviceAndFileDigests(device: string, file: string): Promise<[string, string]> {
  const { stdout } = await run('md5sum', [device], { maxBuffer: 1 << 20 })
  return [stdout.split(' ')[0]!, createHash('md5').update(readFileSync(file)).digest('hex')]
}
