// A loop device written in TypeScript: reads and writes are handed to the
// queue's io_uring with the IO's own buffer (no copy, no second trip
// through JavaScript); flush and discard become fdatasync and punch-hole.
//   truncate -s 1G /var/tmp/disk.img
//   ublk-ts serve examples/loop.ts --size 1G -- --file /var/tmp/disk.img
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../lib/target.ts'
import type { BackingFile, Target, TargetArgs } from '../lib/index.ts'

export default function loop(args: TargetArgs): Target {
  if (typeof args.file !== 'string') throw Object.assign(new Error('give the backing file: -- --file PATH'), { code: 'EINVAL' })
  const path = args.file
  let file: BackingFile
  return {
    name: 'loop-example',
    async open(ctx) {
      file = await ctx.openFile(path, { direct: true })
    },
    read: (io) => io.passthrough(file, io.offset),
    write: (io) => io.passthrough(file, io.offset),
    flush: (io) => io.fdatasync(file),
    discard: (io) => io.fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io.offset, io.length),
  }
}
