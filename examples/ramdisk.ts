// A RAM disk written in TypeScript, as a class: data lives in one buffer,
// and IO data is copied straight between it and the IO's own buffer.
//   ublk-ts serve examples/ramdisk.ts --size 64M
// `serve` makes one with the module's options and the device's geometry.
import type { DeviceGeometry, Io, Target, TargetArgs } from '../lib/index.ts'

export default class RamDisk implements Target {
  readonly name = 'ramdisk-example'
  readonly #data: Uint8Array

  constructor(_args: TargetArgs, device: DeviceGeometry) {
    this.#data = new Uint8Array(device.size)
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
