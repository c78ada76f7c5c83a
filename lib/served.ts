// A device served by a TypeScript target: the native bridge, the
// dispatcher that calls the target, and the context the target opens its
// files and runs its own backend IO through.
import binding = require('./binding.js')
import { Dispatcher, hasBatchHooks } from './dispatch/index.js'
import { native, nativeSync, toUblkError, UblkError } from './errors.js'
import { Handles } from './handles.js'
import type { DispatchStats } from './metrics/stats.js'
import type { DeviceGeometry } from './target-module.js'
import type { BackingFile, CloseReason, StagingBuffer, Target, TargetContext, WriteGate } from './target.js'
import { KIND_FDATASYNC, KIND_READ, KIND_SLEEP, KIND_WRITE, RWF_DSYNC, STAGING } from './wire.js'

import type { NativeBridge, NativeCapabilities, NativeDevice, NativeDeviceOptions, NativeRecoveryClaim, NativeWriteGate } from '../index.js'

/** What a served TypeScript target gives the `Device` that runs it. */
export interface Served {
  /** Before the device stops: fails what the target holds, refuses what comes. */
  shutdown(): void
  /** Once the device stopped: closes the target (every instance of it). */
  close(reason: CloseReason): Promise<void>
  /** The hand-overs to JavaScript so far, and the IOs served without it. */
  dispatch(): DispatchStats
  /** Whether the target's own threads (workers) keep the process alive. */
  ref?(keepAlive: boolean): void
}

export interface ServedDevice {
  native: NativeDevice
  served: Served
  /** Registers what runs once the device stopped, however it was stopped. */
  onStopped(listener: () => void): void
}

/** What the target's methods decide the device advertises. */
export function capabilitiesOf(target: Target): NativeCapabilities {
  if (typeof target.read !== 'function') {
    throw new UblkError('EINVAL', 'a target needs at least a read(io) method')
  }
  return {
    readOnly: typeof target.write !== 'function',
    flush: typeof target.flush === 'function',
    fua: target.fua === true && typeof target.write === 'function',
    discard: typeof target.discard === 'function',
    writeZeroes: typeof target.writeZeroes === 'function',
    batchHooks: hasBatchHooks(target),
    zeroCopy: target.zeroCopy === true,
  }
}

/** A device's options with the native defaults filled in, as target factories and dispatchers see them. */
export function geometryOf(options: Omit<NativeDeviceOptions, 'target' | 'path'>): DeviceGeometry {
  return {
    size: options.size,
    queues: options.queues ?? 1,
    depth: options.depth ?? 64,
    logicalBlockSize: options.logicalBlockSize ?? 512,
  }
}

/** Starts the device a prepared bridge serves, or takes over the claimed one. */
export function startBridge(bridge: NativeBridge, claim?: NativeRecoveryClaim): Promise<NativeDevice> {
  return native(() => (claim ? binding.recoverBridgedDevice(bridge, claim) : binding.startBridgedDevice(bridge)))
}

/**
 * Prepares the bridge, opens the target, starts the device, or with a
 * recovery claim takes over the claimed device from its dead server.
 * With `hostQueue`, this thread's event loop serves queue 0's ring.
 */
export async function serve(
  target: Target,
  geometry: Omit<NativeDeviceOptions, 'target' | 'path'>,
  ioTimeoutMs: number,
  claim?: NativeRecoveryClaim,
  hostQueue = false,
): Promise<ServedDevice> {
  const capabilities = capabilitiesOf(target)
  const stopped: Array<() => void> = []
  const handles = new Handles()
  const { queues, depth } = geometryOf(geometry)
  const dispatcher = new Dispatcher(target, {
    queues,
    depth,
    ioTimeoutMs,
    handles,
    onStopped: () => {
      for (const listener of stopped.splice(0)) listener()
    },
  })
  const bridge: NativeBridge = await native(() =>
    binding.createBridge({ ...geometry, target: target.name ?? 'typescript' }, capabilities, dispatcher.onBatch),
  )
  dispatcher.attach(bridge)
  if (hostQueue) {
    try {
      nativeSync(() => bridge.hostQueue(0, dispatcher.onBatch))
    } catch (err) {
      bridge.close()
      throw err
    }
  }
  try {
    await target.open?.(contextFor(bridge, dispatcher, handles, geometry.size))
  } catch (err) {
    bridge.close()
    throw toUblkError(err)
  }
  const nativeDevice = await startBridge(bridge, claim)
  const served: Served = {
    shutdown: () => dispatcher.shutdown(),
    close: async (reason) => {
      await target.close?.(reason)
    },
    dispatch: (): DispatchStats => ({
      batches: dispatcher.batches,
      ios: dispatcher.ios,
      routedReads: dispatcher.routedReads(),
      routedWrites: dispatcher.routedWrites(),
    }),
  }
  return { native: nativeDevice, served, onStopped: (listener) => stopped.push(listener) }
}

/**
 * What a target opens its files and runs its backend IO through; requests
 * that name no queue go to `queue` (a worker's own).
 */
export function contextFor(bridge: NativeBridge, dispatcher: Dispatcher, handles: Handles, size: number, queue = 0): TargetContext {
  const outbox = dispatcher.outbox
  /** Runs a backend request outside any IO, on a staging buffer or on nothing. */
  const staged = (
    kind: number,
    file: BackingFile,
    buffer: StagingBuffer,
    fileOffset: number,
    options: { queue?: number; bufOffset?: number; length?: number; dsync?: boolean },
  ): Promise<number> => {
    const what = `${kind === KIND_READ ? 'read' : 'write'} of ${file?.path ?? 'a file'}`
    try {
      const fileHandle = handles.handleOf(file, what)
      const staging = handles.handleOf(buffer, what)
      const bufOffset = options.bufOffset ?? 0
      const length = options.length ?? buffer.bytes.byteLength - bufOffset
      const flags = options.dsync && kind === KIND_WRITE ? RWF_DSYNC : 0
      return outbox.request(options.queue ?? queue, kind | STAGING, flags, fileHandle, { staging }, bufOffset, length, fileOffset, what)
    } catch (err) {
      return Promise.reject(err as Error)
    }
  }
  return {
    size,
    async openFile(path, opts = {}): Promise<BackingFile> {
      const opened = await native(() => bridge.openBacking(path, opts.direct ?? true, opts.readOnly ?? false))
      return handles.file(path, opened)
    },
    allocBuffer(bytes: number): StagingBuffer {
      const handle = nativeSync(() => bridge.allocStaging(bytes))
      const memory = nativeSync(() => bridge.stagingBuffer(handle))
      return handles.staging(handle, memory, () => void bridge.freeStaging(handle))
    },
    read(file, buffer, fileOffset, options = {}) {
      return staged(KIND_READ, file, buffer, fileOffset, options)
    },
    write(file, buffer, fileOffset, options = {}) {
      return staged(KIND_WRITE, file, buffer, fileOffset, options)
    },
    async fdatasync(file, onQueue) {
      const what = `fdatasync of ${file?.path ?? 'a file'}`
      await outbox.request(onQueue ?? queue, KIND_FDATASYNC, 0, handles.handleOf(file, what), null, 0, 0, 0, what)
    },
    async sleep(ms, onQueue) {
      await outbox.request(onQueue ?? queue, KIND_SLEEP, 0, 0, null, 0, Math.round(ms * 1000), 0, 'sleep')
    },
    routeReads(route) {
      if (route === undefined) return nativeSync(() => bridge.setReadRoute(null, 0, 0))
      const files = route.files.map((f) => handles.handleOf(f, 'read route'))
      nativeSync(() => bridge.setReadRoute(files, route.fileOffset ?? 0, route.stripeBytes ?? 1 << 20))
    },
    routedReads() {
      return bridge.routedReads()
    },
    routeWrites(route) {
      if (route === undefined) return nativeSync(() => bridge.setWriteRoute(null, 0, false, false))
      if ((route.file === undefined) === (route.files === undefined)) {
        throw new UblkError('EINVAL', 'a write route names either file or files')
      }
      const files = (route.files ?? [route.file!]).map((f) => handles.handleOf(f, 'write route'))
      if (route.offload !== undefined && typeof route.offload !== 'boolean') {
        throw new UblkError('EINVAL', `a write route's offload must be true or false, got ${String(route.offload)}`)
      }
      nativeSync(() => bridge.setWriteRoute(files, route.fileOffset ?? 0, route.gated ?? false, route.offload ?? false))
    },
    writeGate(chunkBytes) {
      return writeGateOf(nativeSync(() => bridge.createWriteGate(chunkBytes)))
    },
    routedWrites() {
      return bridge.routedWrites()
    },
  }
}

/** The native gate, with its errors turned into `UblkError`s. */
function writeGateOf(gate: NativeWriteGate): WriteGate {
  return {
    chunkBytes: gate.chunkBytes,
    chunks: gate.chunks,
    open: (first, last = first) => nativeSync(() => gate.open(first, last)),
    close: (chunk) => nativeSync(() => gate.close(chunk)),
    inFlight: (chunk) => nativeSync(() => gate.inFlight(chunk)),
    closeIfIdle: (chunk) => nativeSync(() => gate.closeIfIdle(chunk)),
    takeTouched: () => gate.takeTouched(),
    failures: () => gate.failures(),
  }
}
