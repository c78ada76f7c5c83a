import { truncateSync, writeFileSync } from 'node:fs'

/** A sparse scratch file of `size` bytes in /tmp, named for this process. */
export function scratchFile(name: string, size: number, head = ''): string {
  const file = `/tmp/ublk-${name}-${process.pid}.img`
  writeFileSync(file, head)
  truncateSync(file, size)
  return file
}
