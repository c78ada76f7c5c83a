// A RAM disk written in TypeScript, as a class: data lives in one buffer,
// and IO data is copied straight between it and the IO's own buffer.
//   node --import tsx examples/ts-ramdisk.ts
import { createDevice, type Io, type Target } from '../lib/index.ts'
import { serveUntilSignal } from './serve.ts'

class RamDisk implements Target {
  readonly name = 'ramdisk-example'
  readonly #data: Uint8Array

  constructor(size: number) {
    this.#data = new Uint8Array(size)
  }

  read(io: Io): void {
    io.buffer.set(this.#data.subarray(io.offset, io.offset + io.length))
  }

  write(io: Io): void {
    this.#data.set(io.buffer, io.offset)
  }

  discard(io: Io): void {
    this.#data.fill(0, io.offset, io.offset + io.length)
  }
}

const size = 256 << 20
async function main(): Promise<void> {
  await serveUntilSignal(await createDevice({ size, target: new RamDisk(size) }))
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
