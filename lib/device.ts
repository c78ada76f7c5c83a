import binding = require('./binding.js')
import { BackendKind, Dispatcher } from './dispatch.js'
import { native, nativeSync, toUblkError, UblkError } from './errors.js'
import type { BackingFile, StagingBuffer, Target, TargetContext } from './target.js'

import type { DeviceInfo, KernelFeatures, NativeBridge, NativeDevice } from '../index.js'

export type { DeviceInfo, KernelFeatures }

/** Targets implemented in Rust inside the addon. */
export type BuiltinTarget = 'null' | 'loop'

export interface DeviceOptions {
  /** What serves the device's IO: a built-in Rust target or a TypeScript one. */
  target: BuiltinTarget | Target
  /** Capacity in bytes; a whole number of logical blocks. */
  size: number
  /** Backing file or block device of the built-in 'loop' target. */
  path?: string
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
  /** TypeScript targets: fail an IO not completed within this many ms (default 30000; 0: never). */
  ioTimeoutMs?: number
}

interface Served {
  dispatcher: Dispatcher
  target: Target
}

/** Devices this process serves, by id, so `deleteDevice(id)` goes through them. */
const served = new Map<number, Device>()

/** A started ublk device served by this process. */
export class Device {
  readonly #native: NativeDevice
  readonly #served: Served | undefined
  #stopping: Promise<void> | undefined
  /** Keeps the process alive while the device runs, as a listening server does. */
  readonly #keepAlive = setInterval(() => {}, 2 ** 31 - 1)

  /** @internal use `createDevice()` */
  constructor(nativeDevice: NativeDevice, target?: Served) {
    this.#native = nativeDevice
    this.#served = target
    served.set(nativeDevice.id, this)
  }

  /** Lets the process exit while the device runs (it is then stopped on exit). */
  unref(): this {
    this.#keepAlive.unref()
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    this.#keepAlive.ref()
    return this
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

  /** For TypeScript targets: IO batches handed over so far, and their IOs. */
  stats(): { batches: number; ios: number; routedReads: number } | undefined {
    const d = this.#served?.dispatcher
    return d ? { batches: d.batches, ios: d.ios, routedReads: d.routedReads() } : undefined
  }

  /** The device as the kernel describes it now. */
  info(): Promise<DeviceInfo> {
    return native(() => this.#native.info())
  }

  /**
   * Stops the device and deletes it; resolves once it is gone. IOs a
   * TypeScript target has not completed are failed, so this never waits
   * for the target. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop()
    return this.#stopping
  }

  async #stop(): Promise<void> {
    clearInterval(this.#keepAlive)
    if (served.get(this.id) === this) served.delete(this.id)
    this.#served?.dispatcher.shutdown()
    await native(() => this.#native.stop())
    await this.#served?.target.close?.()
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
  if (typeof options.target !== 'string' && (typeof options.target !== 'object' || options.target === null)) {
    throw new UblkError('EINVAL', 'options.target must be a built-in target name ("null") or a target object')
  }
  stopDevicesOnExit()
  if (typeof options.target === 'object' && options.target !== null) {
    return createServedDevice(options, options.target)
  }
  const { target, ...rest } = options
  const nativeDevice = await native(() => binding.createDevice({ ...rest, target }))
  return new Device(nativeDevice)
}

function capabilitiesOf(target: Target) {
  if (typeof target.read !== 'function') {
    throw new UblkError('EINVAL', 'a target needs at least a read(io) method')
  }
  return {
    readOnly: typeof target.write !== 'function',
    flush: typeof target.flush === 'function',
    fua: target.fua === true && typeof target.write === 'function',
    discard: typeof target.discard === 'function',
    writeZeroes: typeof target.writeZeroes === 'function',
  }
}

async function createServedDevice(options: DeviceOptions, target: Target): Promise<Device> {
  const { target: _target, ioTimeoutMs = 30_000, path: _path, ...geometry } = options
  if (typeof ioTimeoutMs !== 'number' || !(ioTimeoutMs >= 0)) {
    throw new UblkError('EINVAL', `ioTimeoutMs must be a number of milliseconds >= 0, got ${String(ioTimeoutMs)}`)
  }
  const capabilities = capabilitiesOf(target)
  let dispatcher: Dispatcher | undefined
  const bridge: NativeBridge = await native(() =>
    binding.createBridge({ ...geometry, target: target.name ?? 'typescript' }, capabilities, (q, ios, bufs, backend) =>
      dispatcher?.onBatch(q, ios, bufs, backend),
    ),
  )
  dispatcher = new Dispatcher(target, {
    queues: geometry.queues ?? 1,
    depth: geometry.depth ?? 64,
    ioTimeoutMs,
  })
  dispatcher.attach(bridge)
  try {
    await target.open?.(contextFor(bridge, dispatcher, geometry.size))
  } catch (err) {
    bridge.close()
    throw toUblkError(err)
  }
  const nativeDevice = await native(() => binding.startBridgedDevice(bridge))
  return new Device(nativeDevice, { dispatcher, target })
}

function contextFor(bridge: NativeBridge, dispatcher: Dispatcher, size: number): TargetContext {
  return {
    size,
    async openFile(path, opts = {}): Promise<BackingFile> {
      const f = await native(() => bridge.openBacking(path, opts.direct ?? true, opts.readOnly ?? false))
      const file = { path, index: f.index, size: f.size, direct: f.direct, readOnly: f.readOnly, blockDevice: f.blockDevice }
      dispatcher.registerFile(file)
      return file
    },
    allocBuffer(bytes: number): StagingBuffer {
      const index = nativeSync(() => bridge.allocStaging(bytes))
      const memory = nativeSync(() => bridge.stagingBuffer(index))
      return { index, bytes: new Uint8Array(memory), free: () => void bridge.freeStaging(index) }
    },
    read(file, buffer, fileOffset, options = {}) {
      return dispatcher.staged(options.queue ?? 0, BackendKind.Read, file, buffer, fileOffset, options)
    },
    write(file, buffer, fileOffset, options = {}) {
      return dispatcher.staged(options.queue ?? 0, BackendKind.Write, file, buffer, fileOffset, options)
    },
    async fdatasync(file, queue = 0) {
      await dispatcher.backend(queue, BackendKind.Fdatasync, 0, file, 0, 0, 0, 0, 0, 'fdatasync')
    },
    sleep(ms, queue = 0) {
      return dispatcher.sleep(queue, ms)
    },
    routeReads(route) {
      if (route === undefined) return nativeSync(() => bridge.setReadRoute(null, 0, 0))
      const files = route.files.map((f) => f.index)
      nativeSync(() => bridge.setReadRoute(files, route.fileOffset ?? 0, route.stripeBytes ?? 1 << 20))
    },
    routedReads() {
      return bridge.routedReads()
    },
  }
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
  const own = served.get(id)
  if (own) return own.stop()
  return native(() => binding.deleteDevice(id))
}

/** What the running kernel's ublk driver supports, and this machine's limits. */
export function kernelFeatures(): Promise<KernelFeatures> {
  return native(() => binding.kernelFeatures())
}
