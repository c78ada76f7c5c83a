import { EventEmitter } from 'node:events'
import { fileURLToPath } from 'node:url'

import binding = require('./binding.js')
import { native, UblkError } from './errors.js'
import { geometryOf, serve, type Served, type ServedDevice } from './served.js'
import { loadTarget, type TargetArgs } from './target-module.js'
import type { CloseReason, PrimaryTarget, Target } from './target.js'
import { serveInWorkers } from './workers/pool.js'
import { warmUpWorkers, type WorkerTargetSpec } from './workers/threads.js'
import type { DeviceStats } from './metrics/stats.js'

import type { DeviceInfo, KernelFeatures, NativeDevice, NativeRecoveryClaim } from '../index.js'

export type { DeviceInfo, KernelFeatures }

/** `ioTimeoutMs` when none is given. */
const DEFAULT_IO_TIMEOUT_MS = 30_000

/** Targets implemented in Rust inside the addon. */
export type BuiltinTarget = 'null' | 'loop'

/**
 * A TypeScript target given as a module, so that each queue's worker
 * thread can load an instance of its own (see `DeviceOptions.workers`).
 */
export interface TargetModule {
  /**
   * A path or `file:` URL; `.ts` files load through tsx. Its default
   * export is what `ublk-ts serve` takes: a target, a function making one
   * or a class, called with `args` and the device's geometry (with the
   * `queue` an instance serves, in a worker).
   */
  module: string | URL
  /** Options for its factory, as `ublk-ts serve` gives them from `--key value`. */
  args?: Partial<TargetArgs>
  /**
   * An instance made on this thread, for a target whose queues share
   * state that one owner must keep (a mirror's bitmap and member states).
   * With workers it serves queue 0 and the module's instances serve the
   * others, each reaching it through `DeviceGeometry.port`; without
   * workers it serves every queue and the module is not loaded.
   */
  primary?: PrimaryTarget
}

export interface DeviceOptions {
  /** What serves the device's IO: a built-in Rust target, or a TypeScript one (an object, or a module). */
  target: BuiltinTarget | Target | TargetModule
  /**
   * For a target given as a module: serve each queue in a `worker_threads`
   * worker of its own, with its own instance of the target, so that
   * JavaScript runs on as many cores as there are queues. Instances share
   * what they share through their files, `SharedArrayBuffer`s or messages
   * of their own; the device's write gate is one for all. Default: true
   * when `queues > 1`. A worker that dies stops the device (its IOs fail).
   */
  workers?: boolean
  /**
   * Whether a queue gets a thread of its own that hands its IOs to the
   * JavaScript thread running its handler. Without one, that JavaScript
   * thread's event loop polls the queue's io_uring itself, so each IO
   * wakes it alone instead of a queue thread and then it; such a thread
   * must never block (no `execFileSync`, `readFileSync` of the device,
   * `Atomics.wait`), as its queue's IO waits meanwhile.
   *
   * Default: a queue served by a worker (see `workers`) has no queue
   * thread, as that worker runs its queue's target and nothing else; a
   * queue served on the thread that creates the device has one. True: a
   * queue thread for every queue. False: none, also for a queue on this
   * thread, which then serves one such queue at a time (`EBUSY`); several
   * queues need workers. Without queue threads, no `batchIo` (`EINVAL`
   * for false; the default keeps queue threads with it).
   */
  queueThreads?: boolean
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
  /**
   * Run zero copy (`UBLK_F_AUTO_BUF_REG`: the data stays in the kernel and
   * backend reads and writes use the request's own pages) where the kernel
   * has it and the target allows it: the built-in targets, and TypeScript
   * targets that declare `zeroCopy`. Default true; false forces the copy
   * path. `info().zeroCopy` says which path the device runs.
   */
  zeroCopy?: boolean
  /**
   * Fetch and commit IOs many per command (`UBLK_F_BATCH_IO`, Linux 7.0)
   * instead of one command per IO, where the kernel has it and the device
   * runs the copy path (zero copy wins where both could run: libublk's
   * batch transport does not take it). Default false. `info().batchIo`
   * says which the device runs. A batch IO device cannot be handed over
   * in place (`handOver()` is EOPNOTSUPP); abandon and exit works.
   */
  batchIo?: boolean
  /**
   * What the device does when this process dies (kill -9, a crash, OOM):
   * 'none' (default) and it dies too; 'reissue' and it waits, holding its
   * IO, for a new process to take it over with `recoverDevice(id)`: the
   * IOs this one held are reissued to that one, so none fails. A file
   * system mounted on it never notices. 'fail-io' (IO fails until then)
   * is refused with EOPNOTSUPP: libublk 0.4 cannot add such a device.
   */
  recovery?: Recovery
}

/** What a device does when its server dies; see `DeviceOptions.recovery`. */
export type Recovery = 'none' | 'reissue' | 'fail-io'

/** How `recoverDevice` serves the device it takes over. */
export interface RecoverOptions {
  /** The new server's target: like the one that served the device (same capabilities). */
  target: BuiltinTarget | Target | TargetModule
  /** For a target given as a module: as `DeviceOptions.workers`. */
  workers?: boolean
  /** TypeScript targets: as `DeviceOptions.queueThreads`. */
  queueThreads?: boolean
  /** Backing file or block device of the built-in 'loop' target. */
  path?: string
  /** TypeScript targets: fail an IO not completed within this many ms (default 30000; 0: never). */
  ioTimeoutMs?: number
  /**
   * Wait as a standby while the device is still served, and take it over
   * the moment its server dies (see `waitRecoverable`). Without it, a
   * device still served is refused with EBUSY.
   */
  standby?: boolean
  /**
   * A claim already held on the device (`claimRecovery`), for a target
   * that prepared itself under it; it ends when the recovery does.
   */
  claim?: RecoveryClaim
}

/**
 * The right to take one device over, held by one recoverer at a time on
 * this machine (see `claimRecovery`).
 */
export interface RecoveryClaim {
  /** The device as it was when the claim was granted: its server gone. */
  readonly info: DeviceInfo
  /** Ends the claim without recovering; a no-op once it ended. */
  release(): void
}

/** What a `Device` emits. */
export interface DeviceEvents {
  /**
   * The device stopped (by `stop()`, or deleted by another process), was
   * handed over to another process (`handOver()`), or left to the kernel
   * for one (`abandon()`).
   */
  state: [state: 'stopped' | 'handed-over' | 'abandoned']
  /**
   * An error the native core reports for this device (EIO, with the
   * `queue` it happened on, -1 for the device). Without a listener it is a
   * process warning (`UblkWarning`), like the core's warnings always are:
   * an `error` nobody listens to does not end the process.
   */
  error: [err: UblkError & { queue: number }]
}

/** Devices this process serves, by id, for what the native core reports of them. */
const served = new Map<number, WeakRef<Device>>()

/** A started ublk device served by this process; an `EventEmitter` of `DeviceEvents`. */
export class Device extends EventEmitter<DeviceEvents> {
  readonly #native: NativeDevice
  readonly #served: Served | undefined
  #stopping: Promise<void> | undefined
  #closed: Promise<void> | undefined
  #closeReason: CloseReason = 'stopped'
  /**
   * Keeps the process alive while the device runs, as a listening server
   * does, and notices a device stopped elsewhere (by `deleteDevice(id)`, or
   * deleted in the kernel by another process) to let go of it here too.
   */
  readonly #keepAlive = setInterval(() => {
    if (!this.#native.serving) void this.stop().catch(() => {})
  }, 1000)
  #markStopped: () => void = () => {}
  readonly #whenStopped = new Promise<void>((resolve) => (this.#markStopped = resolve))

  /** @internal use `createDevice()` */
  constructor(nativeDevice: NativeDevice, servedBy?: Served) {
    super()
    this.#native = nativeDevice
    this.#served = servedBy
    served.set(nativeDevice.id, new WeakRef(this))
  }

  /** Lets the process exit while the device runs (it is then stopped on exit). */
  unref(): this {
    this.#keepAlive.unref()
    this.#served?.ref?.(false)
    return this
  }

  /** Undoes `unref()`. */
  ref(): this {
    this.#keepAlive.ref()
    this.#served?.ref?.(true)
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

  /**
   * The device's IO figures, per queue and in total (IOs, bytes, errors by
   * errno, latency histograms per operation), as the queue threads count
   * them; the last ones once it stopped. TypeScript targets also get
   * `dispatch`: the batches handed over to JavaScript.
   */
  stats(): DeviceStats {
    const s: DeviceStats = this.#native.stats()
    if (this.#served) s.dispatch = this.#served.dispatch()
    return s
  }

  /**
   * Resolves once the device stopped, however: by `stop()`, or deleted by
   * another process (noticed within a second). A server that waits on it
   * never outlives its device.
   */
  whenStopped(): Promise<void> {
    return this.#whenStopped
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
    this.#served?.shutdown()
    try {
      await native(() => this.#native.stop())
    } finally {
      await this.afterStop()
    }
  }

  /**
   * A live upgrade by a process that lives on: stops serving the device
   * without stopping it, so that a process waiting for it
   * (`recoverDevice(id, { standby: true })`, `ublk-ts upgrade`) takes it
   * over. The kernel quiesces the device: it sends no new IO, the IOs the
   * target holds are answered as usual, and what arrives meanwhile waits
   * in the kernel for the next server, so no IO fails. The target is
   * closed with `'handed-over'` before the next server may take over.
   * Afterwards this object is stopped.
   *
   * Only for a device created with `recovery: 'reissue'` (EINVAL
   * otherwise), and on Linux 6.16 or newer (`UBLK_F_QUIESCE`); elsewhere
   * EOPNOTSUPP, and the device is served on: `abandon()` and exit instead.
   */
  handOver(): Promise<void> {
    if (this.#stopping) return Promise.reject(new UblkError('EALREADY', `ublk device ${this.id} is already stopping`))
    const handing = (async () => {
      this.#closeReason = 'handed-over'
      try {
        await native(() => this.#native.handOver())
      } catch (err) {
        this.#closeReason = 'stopped'
        throw err
      }
      try {
        await this.afterStop()
      } finally {
        this.#native.finishHandOver()
      }
    })()
    // A refused hand-over leaves the device served, and stoppable.
    this.#stopping = handing.catch(() => {})
    handing.catch(() => {
      if (!this.#native.stopped) this.#stopping = undefined
    })
    return handing
  }

  /**
   * For a process about to exit (`process.exit()` right after): leaves the
   * device to the kernel, neither stopped nor deleted by this process. A
   * device created with `recovery: 'reissue'` then waits for its next
   * server as after a crash, with the IOs in flight kept for it: a live
   * upgrade, with a standby (`recoverDevice(id, { standby: true })`)
   * taking over. Any other device dies with the process.
   */
  abandon(): void {
    this.#native.abandon()
    this.#emitState('abandoned')
  }

  /**
   * @internal What serves the device can no longer serve it (a queue's
   * worker died): the error is reported as the native core's are, and the
   * device is stopped, failing what that queue held.
   */
  lost(err: Error): void {
    if (this.#stopping) return
    if (this.listenerCount('error') > 0) this.emit('error', Object.assign(new UblkError('EIO', err.message, { cause: err }), { queue: -1 }))
    else process.emitWarning(`ublk device ${this.id}: ${err.message}`, { type: 'UblkWarning', code: 'UBLK_ERROR' })
    void this.stop().catch(() => {})
  }

  /** A listener that throws must not fail the stop: it becomes a process warning. */
  #emitState(state: 'stopped' | 'handed-over' | 'abandoned'): void {
    try {
      this.emit('state', state)
    } catch (err) {
      process.emitWarning(`a Device 'state' listener threw: ${String(err)}`, 'UblkWarning')
    }
  }

  /**
   * @internal Runs once the device stopped, however it was stopped (by
   * `stop()`, or by `deleteDevice(id)` from anywhere in this process):
   * fails what the target still holds and closes the target.
   */
  afterStop(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#keepAlive)
      this.#served?.shutdown()
      await this.#served?.close(this.#closeReason)
    })().finally(() => {
      if (served.get(this.id)?.deref() === this) served.delete(this.id)
      this.#markStopped()
      this.#emitState(this.#closeReason)
    })
    return this.#closed
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }
}

let processHooksInstalled = false

/**
 * Once per process that serves a device: `process.exit()` ends the process
 * without the addon's environment cleanup, so devices are also stopped
 * from an 'exit' listener (a process that exits leaves no device behind);
 * and what the native core logs becomes process warnings.
 */
function installProcessHooks(): void {
  if (processHooksInstalled) return
  processHooksInstalled = true
  process.on('exit', () => binding.stopAllDevices())
  binding.setLogHandler(warn)
}

/** A warning or error of the native core, as a process warning naming its device and queue. */
function warn(level: string, device: number, queue: number, message: string): void {
  const dev = served.get(device)?.deref()
  if (level === 'error' && dev && dev.listenerCount('error') > 0) {
    dev.emit('error', Object.assign(new UblkError('EIO', message), { queue }))
    return
  }
  const where = device >= 0 ? `ublk device ${device}${queue >= 0 ? ` queue ${queue}` : ''}: ` : ''
  process.emitWarning(`${where}${message}`, { type: 'UblkWarning', code: `UBLK_${level.toUpperCase()}`, detail: JSON.stringify({ device, queue, level }) })
}

/** Adds a device, starts serving it, and resolves once `/dev/ublkbN` exists. */
export async function createDevice(options: DeviceOptions): Promise<Device> {
  if (typeof options !== 'object' || options === null) {
    throw new UblkError('EINVAL', 'createDevice needs an options object')
  }
  if (typeof options.target !== 'string' && (typeof options.target !== 'object' || options.target === null)) {
    throw new UblkError('EINVAL', 'options.target must be a built-in target name ("null") or a target object')
  }
  installProcessHooks()
  if (typeof options.target === 'object' && options.target !== null) {
    return createServedDevice(options, options.target)
  }
  if (options.queueThreads === false) {
    throw new UblkError('EINVAL', 'queueThreads: false is for TypeScript targets: a built-in target is served by its queue threads')
  }
  const { target, queueThreads: _queueThreads, ...rest } = options
  const nativeDevice = await native(() => binding.createDevice({ ...rest, target }))
  return new Device(nativeDevice)
}

/** The file and options each worker loads. */
function moduleSpec({ module, args = {} }: Pick<TargetModule, 'module' | 'args'>): WorkerTargetSpec {
  if (typeof module !== 'string' && !(module instanceof URL)) throw new UblkError('EINVAL', 'target.module must be a path or a file: URL')
  const file = module instanceof URL || module.startsWith('file:') ? fileURLToPath(module) : module
  return { file, args: { ...args, _: args._ ?? [] } }
}

/** Whether a module target runs in workers: by default with more than one queue; a primary alone serves one queue. */
function servedInWorkers(workers: boolean | undefined, queues: number, withPrimary: boolean): boolean {
  return (workers ?? queues > 1) && !(withPrimary && queues === 1)
}

/**
 * For a process about to take device `id` over with a module target:
 * spawns the workers serving it will need now, so that the take-over
 * does not wait for threads to start. Returns what ends them if unused.
 * @internal
 */
export async function warmUpForRecovery(
  id: number,
  target: Pick<TargetModule, 'module' | 'args'>,
  withPrimary: boolean,
  options: { workers?: boolean | undefined; ioTimeoutMs?: number | undefined },
): Promise<() => Promise<void>> {
  let info: DeviceInfo
  try {
    info = await deviceInfo(id)
  } catch {
    // No such device: the claim says so.
    return async () => {}
  }
  if (!servedInWorkers(options.workers, info.queues, withPrimary)) return async () => {}
  const device = geometryOf({ size: info.size, queues: info.queues, depth: info.depth, logicalBlockSize: info.logicalBlockSize })
  return warmUpWorkers(moduleSpec(target), device, options.ioTimeoutMs ?? DEFAULT_IO_TIMEOUT_MS, withPrimary)
}

/** What `queueThreads: false` needs: one queue per JavaScript thread. */
function checkHostable(queues: number, batchIo: boolean | undefined, inWorkers: boolean): void {
  if (queues !== 1 && !inWorkers) {
    throw new UblkError(
      'EINVAL',
      `queueThreads: false serves each queue from a JavaScript thread of its own: this device has ${queues} queues on one thread (give the target as a module, served by workers)`,
    )
  }
  if (batchIo === true) throw new UblkError('EINVAL', 'queueThreads: false does not run the batch IO transport')
}

function isTargetModule(target: Target | TargetModule): target is TargetModule {
  return 'module' in target && typeof (target as Partial<Target>).read !== 'function'
}

async function createServedDevice(options: DeviceOptions, target: Target | TargetModule, claim?: NativeRecoveryClaim): Promise<Device> {
  const { target: _target, ioTimeoutMs = DEFAULT_IO_TIMEOUT_MS, path: _path, workers, queueThreads, ...geometry } = options
  if (typeof ioTimeoutMs !== 'number' || !(ioTimeoutMs >= 0)) {
    throw new UblkError('EINVAL', `ioTimeoutMs must be a number of milliseconds >= 0, got ${String(ioTimeoutMs)}`)
  }
  if (workers !== undefined && typeof workers !== 'boolean') throw new UblkError('EINVAL', 'workers must be true or false')
  if (queueThreads !== undefined && typeof queueThreads !== 'boolean') throw new UblkError('EINVAL', 'queueThreads must be true or false')
  const hostQueue = queueThreads === false
  const inWorkers = isTargetModule(target) && servedInWorkers(workers, geometryOf(geometry).queues, target.primary !== undefined)
  if (hostQueue) checkHostable(geometryOf(geometry).queues, geometry.batchIo, inWorkers)
  // A worker runs its queue's target and nothing else: unless told
  // otherwise, it polls its queue's ring itself.
  const hosting = { workers: hostQueue || (queueThreads === undefined && geometry.batchIo !== true), primary: hostQueue }
  let served: ServedDevice
  // A worker lost while the device starts fails the start; later ones stop the device.
  const started: { device?: Device } = {}
  if (isTargetModule(target)) {
    const { primary } = target
    const spec = moduleSpec(target)
    if (primary !== undefined && (typeof primary?.read !== 'function' || typeof primary.connectQueue !== 'function')) {
      throw new UblkError('EINVAL', 'target.primary must be a target with a connectQueue(queue, port) method')
    }
    const { file } = spec
    if (inWorkers) {
      served = await serveInWorkers(spec, geometry, ioTimeoutMs, claim, (err) => started.device?.lost(err), primary, hosting)
    } else if (primary) {
      served = await serve(primary, geometry, ioTimeoutMs, claim, hostQueue)
    } else {
      const instance = await loadTarget(file, spec.args, geometryOf(geometry))
      served = await serve(instance, geometry, ioTimeoutMs, claim, hostQueue)
    }
  } else {
    if (workers === true) throw new UblkError('EINVAL', 'workers need the target as a module ({ module: path }), which each worker loads')
    served = await serve(target, geometry, ioTimeoutMs, claim, hostQueue)
  }
  const device = new Device(served.native, served.served)
  started.device = device
  served.onStopped(() => void device.afterStop())
  return device
}

/**
 * Takes over device `id`, whose server died, and serves it with
 * `options.target`: the same `/dev/ublkbN` with the same size, live
 * again, with the IOs the dead server held reissued to this one. The
 * device must have been created with `recovery: 'reissue'`; its geometry
 * is read from the kernel. Waits up to 30 s for the kernel to let go of
 * the dead server. When it fails, the device is left as it was. Two
 * processes never take one device over at once: the second waits for the
 * first, then finds the device served (EBUSY, or a standby waits on).
 */
export async function recoverDevice(id: number, options: RecoverOptions): Promise<Device> {
  if (typeof options !== 'object' || options === null) {
    throw new UblkError('EINVAL', 'recoverDevice needs an options object with a target')
  }
  const { target, path, ioTimeoutMs } = options
  // Checked before the claim: a standby may wait for a long time.
  if (typeof target !== 'string' && (typeof target !== 'object' || target === null)) {
    throw new UblkError('EINVAL', 'options.target must be a built-in target name ("null") or a target object')
  }
  if (options.queueThreads !== undefined && typeof options.queueThreads !== 'boolean') throw new UblkError('EINVAL', 'queueThreads must be true or false')
  if (options.queueThreads === false && typeof target === 'string') {
    throw new UblkError('EINVAL', 'queueThreads: false is for TypeScript targets: a built-in target is served by its queue threads')
  }
  // A standby may wait long for the claim: its workers start meanwhile.
  const unused =
    options.standby === true && options.claim === undefined && typeof target === 'object' && isTargetModule(target)
      ? await warmUpForRecovery(id, target, target.primary !== undefined, options)
      : async () => {}
  let claim: NativeRecoveryClaim
  try {
    claim = (options.claim as NativeRecoveryClaim | undefined) ?? (await claimRecovery(id, { standby: options.standby === true }))
  } catch (err) {
    await unused()
    throw err
  }
  try {
    const info = claim.info
    if (info.id !== id) throw new UblkError('EINVAL', `the recovery claim is for ublk device ${info.id}, not ${id}`)
    const geometry = {
      id,
      size: info.size,
      logicalBlockSize: info.logicalBlockSize,
      queues: info.queues,
      depth: info.depth,
      maxIoBytes: info.maxIoBytes,
      zeroCopy: info.zeroCopy,
      batchIo: info.batchIo,
      recovery: info.recovery as Recovery,
    }
    installProcessHooks()
    if (typeof target === 'object') {
      const { workers, queueThreads } = options
      const modes = { ...(workers !== undefined ? { workers } : {}), ...(queueThreads !== undefined ? { queueThreads } : {}) }
      return await createServedDevice({ ...geometry, target, ioTimeoutMs, ...modes }, target, claim)
    }
    const nativeDevice = await native(() => binding.recoverDevice({ ...geometry, target, path }, claim))
    return new Device(nativeDevice)
  } finally {
    claim.release()
    await unused()
  }
}

/**
 * Claims the recovery of device `id`: resolves once its server is gone
 * and no other process on this machine is taking it over; then nobody
 * else can until the claim ends (`recoverDevice` with `{ claim }`, or
 * `release()`). For a target that must read or write its own metadata
 * before it serves, as the RAID1 target does its members'. Without
 * `standby`, a device still served is EBUSY, and the wait ends after
 * `timeoutMs` (default 30 s) with ETIMEDOUT; a standby waits while the
 * device is served (for `timeoutMs`, or for ever) and goes on waiting
 * when another process takes it over first.
 */
export function claimRecovery(id: number, options: { standby?: boolean; timeoutMs?: number } = {}): Promise<RecoveryClaim> {
  return native(() => binding.claimRecovery(id, options.standby === true, options.timeoutMs))
}

/**
 * Waits while device `id` is served, until its server dies and the kernel
 * holds the device for a new one (then `recoverDevice` takes it over at
 * once); for at most `timeoutMs` (default: for ever), else ETIMEDOUT. A
 * device added without recovery is refused at once with EINVAL. While it
 * waits, it holds one thread of Node's libuv pool.
 */
export function waitRecoverable(id: number, options: { timeoutMs?: number } = {}): Promise<DeviceInfo> {
  return native(() => binding.waitRecoverable(id, options.timeoutMs))
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
