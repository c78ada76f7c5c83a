// A device whose queues are each served by a worker thread of their own,
// each with its own instance of a target module: JavaScript then runs on
// as many cores as the device has queues. This thread keeps the device and
// either a fallback handler that only hears of the stop, or a primary
// instance of the target that serves queue 0 and that the workers reach
// through a port each.
import binding = require('../binding.js')
import { Dispatcher } from '../dispatch/index.js'
import { native, nativeSync, UblkError } from '../errors.js'
import { Handles } from '../handles.js'
import { capabilitiesOf, contextFor, geometryOf, startBridge, type Served, type ServedDevice } from '../served.js'
import type { PrimaryTarget } from '../target.js'
import { spawnWorkers, takeWarm, type WorkerTargetSpec } from './threads.js'

import type { NativeCapabilities, NativeDeviceOptions, NativeRecoveryClaim } from '../../index.js'

const same = (a: NativeCapabilities, b: NativeCapabilities): boolean => JSON.stringify(a) === JSON.stringify(b)

/** Which queues have no queue thread: the thread that runs their handler polls their ring. */
export interface QueueHosting {
  /** The workers' queues, each on its worker. */
  workers: boolean
  /** A primary's queue 0, on this thread. */
  primary: boolean
}

/**
 * Serves a device with one worker per queue (per queue but 0 with a
 * `primary`): each loads the module and reports what its target can do
 * (they must agree), attaches to its queue, opens its target; then the
 * device starts. A primary opens before the workers' instances do, and
 * closes alongside them. `onLost` hears of a worker that ends or fails while
 * the device runs: its queue's IOs fail with EIO from then on, so the
 * device should be stopped. `hosting` says which queues have no queue
 * thread.
 */
export async function serveInWorkers(
  spec: WorkerTargetSpec,
  geometry: Omit<NativeDeviceOptions, 'target' | 'path'>,
  ioTimeoutMs: number,
  claim: NativeRecoveryClaim | undefined,
  onLost: (err: Error) => void,
  primary?: PrimaryTarget,
  hosting: QueueHosting = { workers: false, primary: false },
): Promise<ServedDevice> {
  const device = geometryOf(geometry)
  const { workers, ports, counters } = takeWarm(spec, device, ioTimeoutMs, primary !== undefined) ?? spawnWorkers(spec, device, ioTimeoutMs, primary !== undefined)
  const stopped: Array<() => void> = []
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
      if (hosting.primary && primary) nativeSync(() => bridge.hostQueue(0, local.onBatch))
      if (primary) {
        ports.forEach((port, i) => primary.connectQueue(i + 1, port))
        await primary.open?.(contextFor(bridge, local, handles, device.size))
      }
      for (const w of workers) w.post({ kind: 'attach', token, hostQueue: hosting.workers })
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
        // The primary stops its own work at once (a resync must not outlive
        // the device), and answers the workers until they are gone.
        const primaryClosed = Promise.resolve(primary?.close?.(reason))
        primaryClosed.catch(() => {})
        await Promise.all(workers.map((w) => w.close(reason)))
        await primaryClosed
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
    // The primary is not closed, as `serve` does not close a target whose device did not start: nothing is recorded.
    await Promise.all(workers.map((w) => w.close('stopped')))
    throw err
  }
}
