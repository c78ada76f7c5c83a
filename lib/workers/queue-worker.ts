// The entry of a queue's worker thread: loads the target module, serves
// the one queue it is given with its own instance of the target, and
// closes it when the thread that runs the device says so.
import { parentPort, workerData } from 'node:worker_threads'

import binding = require('../binding.js')
import { Dispatcher } from '../dispatch/index.js'
import { Handles } from '../handles.js'
import { capabilitiesOf, contextFor } from '../served.js'
import { loadTarget } from '../target-module.js'
import type { Target } from '../target.js'
import { toWire, type ParentMessage, type QueueWorkerData, type WorkerMessage } from './protocol.js'

import type { NativeBridge } from '../../index.js'

const data = workerData as QueueWorkerData
const port = parentPort!
const send = (message: WorkerMessage): void => port.postMessage(message)

let target: Target | undefined
let dispatcher: Dispatcher | undefined
let bridge: NativeBridge | undefined
let opened = false

async function attach(token: number, hostQueue: boolean): Promise<void> {
  const { geometry, queue } = data
  const handles = new Handles()
  const served = new Dispatcher(target!, { queues: geometry.queues, depth: geometry.depth, ioTimeoutMs: data.ioTimeoutMs, handles })
  const counters = new Float64Array(data.counters, queue * 2 * 8, 2)
  const onBatch: typeof served.onBatch = (q, ios, backend, events, buffers, table) => {
    served.onBatch(q, ios, backend, events, buffers, table)
    counters[0] = served.batches
    counters[1] = served.ios
  }
  dispatcher = served
  bridge = binding.attachBridgeQueue(token, queue, onBatch)
  served.attach(bridge)
  if (hostQueue) bridge.hostQueue(queue, onBatch)
  await target!.open?.(contextFor(bridge, served, handles, geometry.size, queue))
  opened = true
}

async function close(reason: ParentMessage & { kind: 'close' }): Promise<void> {
  dispatcher?.shutdown()
  try {
    if (opened) await target?.close?.(reason.reason)
  } finally {
    bridge?.close()
  }
}

port.on('message', (message: ParentMessage) => {
  switch (message.kind) {
    case 'attach':
      attach(message.token, message.hostQueue).then(
        () => send({ kind: 'ready' }),
        (err: unknown) => send({ kind: 'failed', error: toWire(err) }),
      )
      break
    case 'shutdown':
      dispatcher?.shutdown()
      break
    case 'close':
      close(message).then(
        () => send({ kind: 'closed' }),
        (err: unknown) => send({ kind: 'failed', error: toWire(err) }),
      )
      break
  }
})

async function load(): Promise<WorkerMessage> {
  target = await loadTarget(data.file, data.args, { ...data.geometry, queue: data.queue, ...(data.port ? { port: data.port } : {}) })
  return { kind: 'loaded', capabilities: capabilitiesOf(target), name: target.name }
}

load().then(send, (err: unknown) => send({ kind: 'failed', error: toWire(err) }))
