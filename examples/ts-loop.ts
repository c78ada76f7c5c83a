// A loop device written in TypeScript: reads and writes are handed to the
// queue's io_uring with the IO's own buffer (no copy, no second trip
// through JavaScript); flush and discard become fdatasync and punch-hole.
//   truncate -s 1G /var/tmp/disk.img && node --import tsx examples/ts-loop.ts /var/tmp/disk.img
import { statSync } from 'node:fs'

import { createDevice, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, type BackingFile } from '../lib/index.ts'
import { serveUntilSignal } from './serve.ts'

const path = process.argv[2] ?? '/var/tmp/disk.img'
let file: BackingFile

async function main(): Promise<void> {
  const dev = await createDevice({
    size: statSync(path).size,
    queues: 2,
    target: {
      async open(ctx) {
        file = await ctx.openFile(path, { direct: true })
      },
      read: (io) => io.passthrough(file, io.offset),
      write: (io) => io.passthrough(file, io.offset),
      flush: (io) => io.fdatasync(file),
      discard: (io) => io.fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io.offset, io.length),
    },
  })
  await serveUntilSignal(dev)
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
