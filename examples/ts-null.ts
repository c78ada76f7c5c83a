// A null device written in TypeScript: every IO succeeds, nothing is kept.
//   node --import tsx examples/ts-null.ts
import { createDevice } from '../lib/index.ts'
import { serveUntilSignal } from './serve.ts'

async function main(): Promise<void> {
  const dev = await createDevice({
    size: 1 << 30,
    queues: 2,
    depth: 128,
    target: {
      read() {},
      write() {},
      flush() {},
    },
  })
  await serveUntilSignal(dev)
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
