// A device whose queues are each served by a worker thread of their own,
// each with its own instance of a target module: JavaScript then runs on
// as many cores as the device has queues. This thread keeps the device and
// either a fallback handler that only hears of the stop, or a primary
// instance of the target that serves queue 0 and that the workers reach
// through a port each.
import { resolve } from 'node:path'
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads'

import binding = require('../binding.js')
import { Dispatcher } from '../dispatch/index.js'
import { native, UblkError } from '../errors.js'
import { Handles } from '../handles.js'
import { capabilitiesOf, contextFor, geometryOf, startBridge, type Served, type ServedDevice } from '../served.js'
import type { TargetArgs } from '../target-module.js'
import type { CloseReason, PrimaryTarget } from '../target.js'
import type { ParentMessage, QueueWorkerData, WorkerMessage } from './protocol.js'

import type { NativeCapabilities, NativeDeviceOptions, NativeRecoveryClaim } from '../../index.js'

/** How long a worker may take to close its target before it is ended. */
const CLOSE_TIMEOUT_MS = 30_000

/** One queue's worker, with its messages awaited one kind at a time. */
class QueueWorker {
  readonly queue: number
  readonly #worker: Worker
  readonly #inbox: WorkerMessage[] = []
  #waiting: ((message: WorkerMessage | Error) => void) | undefined
  #gone: Error | undefined
  /** Called when the worker ends or fails while it is not awaited. */
  onLost: (err: Error) => void = () => {}

  constructor(data: QueueWorkerData) {
    this.queue = data.queue
    this.#worker = new Worker(resolve(__dirname, 'queue-worker.js'), { workerData: data, transferList: data.port ? [data.port] : [] })
    this.#worker.on('message', (message: WorkerMessage) => this.#arrived(message))
    this.#worker.on('error', (err) => this.#lost(new UblkError('EIO', `the worker of queue ${this.queue} failed: ${err.message}`, { cause: err })))
    this.#worker.on('exit', (code) => this.#lost(new UblkError('EIO', `the worker of queue ${this.queue} exited (code ${code})`)))
  }

  #arrived(message: WorkerMessage): void {
    const waiting = this.#waiting
    if (waiting) {
      this.#waiting = undefined
      waiting(message)
    } else if (message.kind === 'failed') {
      this.onLost(new UblkError(message.error.code, `queue ${this.queue}: ${message.error.message}`))
    } else {
      this.#inbox.push(message)
    }
  }

  #lost(err: Error): void {
    if (this.#gone) return
    this.#gone = err
    const waiting = this.#waiting
    this.#waiting = undefined
    if (waiting) waiting(err)
    else this.onLost(err)
  }

  post(message: ParentMessage): void {
    if (!this.#gone) this.#worker.postMessage(message)
  }

  /** The worker's next message, which must be of `kind`. */
  async next<K extends WorkerMessage['kind']>(kind: K): Promise<WorkerMessage & { kind: K }> {
    const message = this.#inbox.shift() ?? (this.#gone ? this.#gone : await new Promise<WorkerMessage | Error>((r) => (this.#waiting = r)))
    if (message instanceof Error) throw message
    if (message.kind === 'failed') throw new UblkError(message.error.code, message.error.message)
    if (message.kind !== kind) throw new UblkError('EPROTO', `the worker of queue ${this.queue} said ${message.kind}, not ${kind}`)
    return message as WorkerMessage & { kind: K }
  }

  /** Closes the target (if the worker got that far) and ends the worker. */
  async close(reason: CloseReason): Promise<void> {
    if (this.#gone) return
    this.onLost = () => {}
    this.post({ kind: 'close', reason })
    const timer = setTimeout(() => void this.#worker.terminate(), CLOSE_TIMEOUT_MS)
    try {
      await this.next('closed')
    } catch {
      // A worker that failed to close, or was gone: it is ended below all the same.
    } finally {
      clearTimeout(timer)
      this.#gone ??= new UblkError('ECANCELED', `the worker of queue ${this.queue} was closed`)
      await this.#worker.terminate()
    }
  }

  ref(keepAlive: boolean): void {
    if (keepAlive) this.#worker.ref()
    else this.#worker.unref()
  }
}

/** What each queue's worker loads: a module file and the options its factory gets. */
export interface WorkerTargetSpec {
  file: string
  args: TargetArgs
}

const same = (a: NativeCapabilities, b: NativeCapabilities): boolean => JSON.stringify(a) === JSON.stringify(b)

/**
 * Serves a device with one worker per queue (per queue but 0 with a
 * `primary`): each loads the module and reports what its target can do
 * (they must agree), attaches to its queue, opens its target; then the
 * device starts. A primary opens before the workers' instances do, and
 * closes after them. `onLost` hears of a worker that ends or fails while
 * the device runs: its queue's IOs fail with EIO from then on, so the
 * device should be stopped.
 */
export async function serveInWorkers(
  spec: WorkerTargetSpec,
  geometry: Omit<NativeDeviceOptions, 'target' | 'path'>,
  ioTimeoutMs: number,
  claim: NativeRecoveryClaim | undefined,
  onLost: (err: Error) => void,
  primary?: PrimaryTarget,
): Promise<ServedDevice> {
  const device = geometryOf(geometry)
  const counters = new SharedArrayBuffer(device.queues * 2 * Float64Array.BYTES_PER_ELEMENT)
  const ports: MessagePort[] = []
  const workers: QueueWorker[] = []
  for (let queue = primary ? 1 : 0; queue < device.queues; queue++) {
    let port: MessagePort | undefined
    if (primary) {
      const channel = new MessageChannel()
      port = channel.port2
      // The worker's own handles keep it alive; this side never should.
      channel.port1.unref()
      ports.push(channel.port1)
    }
    workers.push(new QueueWorker({ file: spec.file, args: spec.args, geometry: device, queue, ioTimeoutMs, counters, ...(port ? { port } : {}) }))
  }
  const stopped: Array<() => void> = []
  let primaryOpened = false
  try {
    const loaded = await Promise.all(workers.map((w) => w.next('loaded')))
    const capabilities = primary ? capabilitiesOf(primary) : loaded[0]!.capabilities
    const name = primary ? primary.name : loaded[0]!.name
    if (!loaded.every((l) => same(l.capabilities, capabilities))) {
      throw new UblkError('EINVAL', `${spec.file}: the target's instances differ in what they can do (one per queue); they must agree`)
    }
    const handles = new Handles()
    // Serves queue 0 with a primary; else hears of the stop only, as IOs
    // never come here once every queue has its worker.
    const local = new Dispatcher(primary ?? { name, read: () => Promise.reject(new UblkError('EIO', 'no worker serves this queue')) }, {
      queues: device.queues,
      depth: device.depth,
      ioTimeoutMs,
      handles,
      onStopped: () => {
        for (const listener of stopped.splice(0)) listener()
      },
    })
    const bridge = await native(() => binding.createBridge({ ...geometry, target: name ?? 'typescript' }, capabilities, local.onBatch))
    local.attach(bridge)
    const token = bridge.share()
    try {
      if (primary) {
        ports.forEach((port, i) => primary.connectQueue(i + 1, port))
        await primary.open?.(contextFor(bridge, local, handles, device.size))
        primaryOpened = true
      }
      for (const w of workers) w.post({ kind: 'attach', token })
      await Promise.all(workers.map((w) => w.next('ready')))
    } catch (err) {
      bridge.close()
      throw err
    }
    let lostEarly: Error | undefined
    for (const w of workers) w.onLost = (err) => (lostEarly ??= err)
    const nativeDevice = await startBridge(bridge, claim)
    if (lostEarly) {
      await native(() => nativeDevice.stop()).catch(() => {})
      throw lostEarly
    }
    for (const w of workers) w.onLost = onLost
    const perQueue = new Float64Array(counters)
    const served: Served = {
      shutdown: () => {
        local.shutdown()
        for (const w of workers) w.post({ kind: 'shutdown' })
      },
      close: async (reason) => {
        await Promise.all(workers.map((w) => w.close(reason)))
        await primary?.close?.(reason)
      },
      dispatch: () => {
        let batches = primary ? local.batches : 0
        let total = primary ? local.ios : 0
        for (let q = primary ? 1 : 0; q < device.queues; q++) {
          batches += perQueue[q * 2]!
          total += perQueue[q * 2 + 1]!
        }
        return { batches, ios: total, routedReads: bridge.routedReads(), routedWrites: bridge.routedWrites() }
      },
      ref: (keepAlive) => {
        for (const w of workers) w.ref(keepAlive)
      },
    }
    return { native: nativeDevice, served, onStopped: (listener) => stopped.push(listener) }
  } catch (err) {
    await Promise.all(workers.map((w) => w.close('stopped')))
    if (primaryOpened) await Promise.resolve(primary?.close?.('stopped')).catch(() => {})
    throw err
  }
}
