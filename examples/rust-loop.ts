// The built-in Rust loop target over a file or block device.
//   truncate -s 1G /var/tmp/disk.img && node --import tsx examples/rust-loop.ts /var/tmp/disk.img
import { statSync } from 'node:fs'

import { createDevice } from '../lib/index.ts'
import { serveUntilSignal } from './serve.ts'

const path = process.argv[2] ?? '/var/tmp/disk.img'
async function main(): Promise<void> {
  await serveUntilSignal(await createDevice({ target: 'loop', path, size: statSync(path).size, queues: 2 }))
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
