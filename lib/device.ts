import binding = require('./binding.js')
import { native, UblkError } from './errors.js'

import type { DeviceInfo, KernelFeatures, NativeDevice } from '../index.js'

export type { DeviceInfo, KernelFeatures }

/** Targets implemented in Rust inside the addon. */
export type BuiltinTarget = 'null'

export interface DeviceOptions {
  /** What serves the device's IO. */
  target: BuiltinTarget
  /** Capacity in bytes; a whole number of logical blocks. */
  size: number
  /** 512 (default), 1024, 2048 or 4096. */
  logicalBlockSize?: number
  /** Hardware queues, each served by its own thread and io_uring. Default 1. */
  queues?: number
  /** IOs in flight per queue, 1..4096. Default 64. */
  depth?: number
  /** Largest single IO in bytes, page aligned. Default 512 KiB. */
  maxIoBytes?: number
  /** Device id to ask for; by default the kernel picks the lowest free one. */
  id?: number
}

/** A started ublk device served by this process. */
export class Device {
  readonly #native: NativeDevice

  /** @internal use `createDevice()` */
  constructor(nativeDevice: NativeDevice) {
    this.#native = nativeDevice
  }

  /** The kernel's device id: the N in `/dev/ublkbN`. */
  get id(): number {
    return this.#native.id
  }

  /** The block device, `/dev/ublkbN`. */
  get path(): string {
    return this.#native.blockPath
  }

  /** The ublk character device the server talks to, `/dev/ublkcN`. */
  get charPath(): string {
    return this.#native.charPath
  }

  get target(): string {
    return this.#native.target
  }

  /** True once the device was stopped (by `stop()` or `deleteDevice(id)`). */
  get stopped(): boolean {
    return this.#native.stopped
  }

  /** The device as the kernel describes it now. */
  info(): Promise<DeviceInfo> {
    return native(() => this.#native.info())
  }

  /** Stops the device and deletes it; resolves once it is gone. Idempotent. */
  stop(): Promise<void> {
    return native(() => this.#native.stop())
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }
}

let exitHandlerInstalled = false

/**
 * `process.exit()` ends the process without the addon's environment
 * cleanup, so devices are also stopped from an 'exit' listener: a process
 * that exits leaves no device behind.
 */
function stopDevicesOnExit(): void {
  if (exitHandlerInstalled) return
  exitHandlerInstalled = true
  process.on('exit', () => binding.stopAllDevices())
}

/** Adds a device, starts serving it, and resolves once `/dev/ublkbN` exists. */
export async function createDevice(options: DeviceOptions): Promise<Device> {
  if (typeof options !== 'object' || options === null) {
    throw new UblkError('EINVAL', 'createDevice needs an options object')
  }
  if (typeof options.target !== 'string') {
    throw new UblkError('EINVAL', 'options.target must name a target, e.g. "null"')
  }
  stopDevicesOnExit()
  const nativeDevice = await native(() => binding.createDevice(options))
  return new Device(nativeDevice)
}

/** Every ublk device on this machine, whoever serves it. */
export function listDevices(): Promise<DeviceInfo[]> {
  return native(() => binding.listDevices())
}

/** One device's info, read from the kernel. */
export function deviceInfo(id: number): Promise<DeviceInfo> {
  return native(() => binding.deviceInfo(id))
}

/**
 * Stops and deletes a device by id. A device this process serves is
 * stopped through its owner, as `device.stop()` would.
 */
export function deleteDevice(id: number): Promise<void> {
  return native(() => binding.deleteDevice(id))
}

/** What the running kernel's ublk driver supports, and this machine's limits. */
export function kernelFeatures(): Promise<KernelFeatures> {
  return native(() => binding.kernelFeatures())
}
