// A queue served from a worker thread: the bridge's batches for that queue
// reach the worker's handler, and its answers reach the queue. The
// synthetic queue thread drives queue 0 with reads (no kernel needed).
import { join } from 'node:path'
import { once } from 'node:events'
import { Worker } from 'node:worker_threads'

import test from 'ava'

import binding = require('../lib/binding.js')
import { toUblkError } from '../lib/errors.ts'
import { createDevice, nullTarget } from '../lib/index.ts'

import { rejectsWithCode } from './helpers/errors.ts'

const caps = { readOnly: false, flush: false, fua: false, discard: false, writeZeroes: false, batchHooks: false, zeroCopy: false }

function codeOf(call: () => unknown): string {
  try {
    call()
    return 'ok'
  } catch (err) {
    return toUblkError(err).code
  }
}

interface Attached {
  attached: boolean
  code?: string
  otherQueue?: string
  startDevice?: string
}

async function queueWorker(token: number, queue: number, queues: number): Promise<{ worker: Worker; attached: Attached; exited: Promise<unknown> }> {
  const worker = new Worker(join(__dirname, 'fixtures', 'queue-worker-null.js'), { workerData: { token, queue, queues } })
  // Listened for from the start: a worker that ends at once delivers its
  // last messages and its 'exit' in one go, before an await could listen.
  const exited = once(worker, 'exit')
  const [attached] = (await once(worker, 'message')) as [Attached]
  return { worker, attached, exited }
}

test.serial("a worker thread serves its queue: the reads reach its handler, not the main thread's, and are answered", async (t) => {
  let mainIos = 0
  const bridge = binding.createBridge({ target: 'workers-test', size: 1 << 20, queues: 2, depth: 32 }, caps, (_q, ios) => {
    mainIos += ios
  })
  const token = bridge.share()
  t.is(bridge.share(), token, 'one token per bridge')
  const { worker, attached, exited } = await queueWorker(token, 0, 2)
  t.true(attached.attached)
  t.is(attached.otherQueue, 'EINVAL', "a worker's bridge answers for its own queue only")
  t.is(attached.startDevice, 'EALREADY', "a worker's bridge cannot start the device")
  const second = await queueWorker(token, 0, 2)
  t.deepEqual(second.attached, { attached: false, code: 'EBUSY' }, 'one handler per queue')
  await second.exited

  // 20000 reads, each answered by the worker, or this times out (ETIMEDOUT).
  const ns = await binding.runSyntheticBridge(bridge, 20_000, 32)
  t.true(ns > 0)
  t.is(mainIos, 0, 'no IO of the worker queue reached the main thread')
  worker.postMessage('close')
  const [closed] = (await once(worker, 'message')) as [{ served: boolean }]
  t.true(closed.served)
  await exited
})

test.serial('attaching checks the token and the queue', async (t) => {
  const bridge = binding.createBridge({ target: 'workers-test', size: 1 << 20, queues: 2, depth: 4 }, caps, () => {})
  const token = bridge.share()
  t.is(codeOf(() => binding.attachBridgeQueue(token + 1000, 0, () => {})), 'ENOENT')
  t.is(codeOf(() => binding.attachBridgeQueue(token, 2, () => {})), 'EINVAL')
  t.is(codeOf(() => binding.attachBridgeQueue(token, -1, () => {})), 'EINVAL')
  t.is(codeOf(() => binding.attachBridgeQueue(Number.NaN, 0, () => {})), 'EINVAL')
  bridge.close()
  t.is(codeOf(() => binding.attachBridgeQueue(token, 1, () => {})), 'ENODEV', 'a released bridge takes no handler')
})

test.serial('createDevice with workers: a target object is EINVAL, a module that fails to load is EINVAL naming it, so are a primary that is not one and the RAID1 queue module alone', async (t) => {
  const size = 1 << 20
  await rejectsWithCode(t, createDevice({ target: nullTarget(), size, queues: 2, workers: true }), 'EINVAL', /workers need the target as a module/)
  const missing = join(__dirname, 'fixtures', 'no-such-target.js')
  await rejectsWithCode(t, createDevice({ target: { module: missing }, size, queues: 2 }), 'EINVAL', /cannot load .*no-such-target\.js/)
  await rejectsWithCode(t, createDevice({ target: { module: 42 as unknown as string }, size, queues: 2 }), 'EINVAL', /target.module must be a path/)
  const nullModule = require.resolve('../lib/targets/null.js')
  await rejectsWithCode(t, createDevice({ target: { module: nullModule, primary: {} as never }, size, queues: 2 }), 'EINVAL', /target.primary must be a target/)
  // The RAID1's queue instance, loaded without the array that gives it its port.
  const raid1Queue = require.resolve('../lib/raid1/queue-target.js')
  await rejectsWithCode(t, createDevice({ target: { module: raid1Queue }, size, queues: 2 }), 'EINVAL', /serves one queue of a RAID1 array/)
})
