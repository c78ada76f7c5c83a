// The worker threads of a device's queues: spawned when the device is
// served, or ahead of time by a process that stands by to take a device
// over, so that its take-over does not wait for threads to start and load
// the target module.
import { resolve } from 'node:path'
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads'

import { UblkError } from '../errors.js'
import type { DeviceGeometry, TargetArgs } from '../target-module.js'
import type { CloseReason } from '../target.js'
import { fromWire, type ParentMessage, type QueueWorkerData, type WorkerMessage } from './protocol.js'

/** How long a worker may take to close its target before it is ended. */
const CLOSE_TIMEOUT_MS = 30_000

/** One queue's worker, with its messages awaited one kind at a time. */
export class QueueWorker {
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
      // Kept too: a worker spawned ahead of time may fail to load before it is awaited.
      this.#inbox.push(message)
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
    if (message.kind === 'failed') throw fromWire(message.error)
    if (message.kind !== kind) throw new UblkError('EPROTO', `the worker of queue ${this.queue} said ${message.kind}, not ${kind}`)
    return message as WorkerMessage & { kind: K }
  }

  /** Closes the target (if the worker got that far) and ends the worker. */
  async close(reason: CloseReason): Promise<void> {
    if (this.#gone) return
    const onLost = this.onLost
    this.onLost = () => {}
    this.post({ kind: 'close', reason })
    let terminated = false
    const timer = setTimeout(() => {
      terminated = true
      void this.#worker.terminate()
    }, CLOSE_TIMEOUT_MS)
    try {
      await this.next('closed')
    } catch (err) {
      // A worker that failed to close, or was gone: it is ended below all
      // the same. One that ended on its own is still a loss: a worker that
      // polls its queue's ring stops the device as it ends, so the close
      // can come before its exit.
      // (`#gone` is set meanwhile, by the worker's exit.)
      const gone = this.#gone as Error | undefined
      if (!terminated && gone !== undefined && err === gone) onLost(gone)
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

/** The workers of one device, with their counters and, with a primary, this side of each worker's port. */
export interface WorkerGroup {
  workers: QueueWorker[]
  ports: MessagePort[]
  /** Per queue: hand-overs, IOs (each worker writes its own pair). */
  counters: SharedArrayBuffer
}

/** A worker per queue (per queue but 0 with a primary), each loading the module at once. */
export function spawnWorkers(spec: WorkerTargetSpec, device: DeviceGeometry, ioTimeoutMs: number, withPrimary: boolean): WorkerGroup {
  const counters = new SharedArrayBuffer(device.queues * 2 * Float64Array.BYTES_PER_ELEMENT)
  const ports: MessagePort[] = []
  const workers: QueueWorker[] = []
  for (let queue = withPrimary ? 1 : 0; queue < device.queues; queue++) {
    let port: MessagePort | undefined
    if (withPrimary) {
      const channel = new MessageChannel()
      port = channel.port2
      // The worker's own handles keep it alive; this side never should.
      channel.port1.unref()
      ports.push(channel.port1)
    }
    workers.push(new QueueWorker({ file: spec.file, args: spec.args, geometry: device, queue, ioTimeoutMs, counters, ...(port ? { port } : {}) }))
  }
  return { workers, ports, counters }
}

const keyOf = (spec: WorkerTargetSpec, device: DeviceGeometry, ioTimeoutMs: number, withPrimary: boolean): string =>
  JSON.stringify([spec.file, spec.args, device.size, device.queues, device.depth, device.logicalBlockSize, ioTimeoutMs, withPrimary])

/** Groups spawned ahead of time, by what they were spawned for. */
const warm = new Map<string, WorkerGroup>()

/**
 * Spawns the workers a device about to be served will need, so that
 * serving it takes them ready. Returns what ends them if no device took
 * them (a take-over that did not happen).
 */
export function warmUpWorkers(spec: WorkerTargetSpec, device: DeviceGeometry, ioTimeoutMs: number, withPrimary: boolean): () => Promise<void> {
  const key = keyOf(spec, device, ioTimeoutMs, withPrimary)
  const group = spawnWorkers(spec, device, ioTimeoutMs, withPrimary)
  warm.get(key)?.workers.forEach((w) => void w.close('stopped'))
  warm.set(key, group)
  return async () => {
    if (warm.get(key) !== group) return
    warm.delete(key)
    await Promise.all(group.workers.map((w) => w.close('stopped')))
  }
}

/** The group spawned ahead of time for exactly this device, if any (it is then the caller's). */
export function takeWarm(spec: WorkerTargetSpec, device: DeviceGeometry, ioTimeoutMs: number, withPrimary: boolean): WorkerGroup | undefined {
  const key = keyOf(spec, device, ioTimeoutMs, withPrimary)
  const group = warm.get(key)
  warm.delete(key)
  return group
}
