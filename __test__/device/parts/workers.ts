// A target given as a module, each queue served by a worker thread of its
// own with its own instance of the target (run in ts-targets.test.js).
import { unlinkSync } from 'node:fs'
import { once } from 'node:events'

import test, { type ExecutionContext } from 'ava'

import { createDevice, recoverDevice, type RecoverOptions, type UblkError } from '../../../lib/index.ts'

import { fixture } from '../../helpers/child.ts'
import { serve } from '../../helpers/cli.ts'
import { scratchFile } from '../../helpers/files.ts'
import { fio, verifyAgainstFile } from '../../helpers/fio.ts'
import { deviceGone, inFlight, queueThreadNames } from '../../helpers/kernel.ts'
import { until } from '../../helpers/poll.ts'
import { sh } from '../../helpers/shell.ts'

const MiB = 1 << 20
const LOOP_MODULE = require.resolve('../../../lib/targets/loop.js')

// By default a worker polls its queue's ring itself (no queue threads); `queueThreads: true` gives each queue one.
for (const queueThreads of [undefined, true]) {
  const how = queueThreads ? ', with queue threads' : ', no queue threads by default (each worker polls its ring)'

  test.serial(`workers: a TypeScript loop module on 2 queues, a worker each${how}: fio crc32c verify from both CPUs, and the file matches`, async (t) => {
    const file = scratchFile('workers-loop', 32 * MiB)
    // Routes off: every IO goes through a worker's JavaScript.
    const target = { module: LOOP_MODULE, args: { file, routeReads: false, routeWrites: false } }
    const dev = await createDevice({ target, size: 32 * MiB, queues: 2, depth: 32, queueThreads })
    try {
      t.is(queueThreadNames(dev.id).length, queueThreads ? 2 : 0, 'queue threads')
      // One job per CPU, each on its own half: blk-mq sends each CPU's IO to its own queue.
      await verifyAgainstFile(t, dev.path, file, {
        rw: 'randwrite',
        bs: '4k',
        iodepth: 16,
        size: '8M',
        numjobs: 2,
        extra: ['--cpus_allowed=0-1', '--cpus_allowed_policy=split', '--offset_increment=16M'],
      })
      const stats = dev.stats()
      const perQueue = stats.queues.map((q) => q.write.ios)
      t.true(perQueue.every((n) => n > 0), `both queues served writes: ${perQueue.join(', ')}`)
      t.true(stats.dispatch!.ios >= stats.total.write.ios, `the workers took every IO in (${stats.dispatch!.ios} of ${stats.total.ios})`)
      t.is(stats.total.errors, 0)
    } finally {
      await dev.stop()
      unlinkSync(file)
    }
    t.true(deviceGone(dev.id))
  })

  test.serial(`workers: a worker that dies stops the device with an error event; its IO fails, nothing hangs${how}`, async (t) => {
    const dev = await createDevice({ target: { module: fixture('exit-on-write.ts') }, size: 8 * MiB, queues: 2, depth: 8, queueThreads })
    const error = once(dev, 'error') as Promise<[UblkError]>
    const write = await sh('dd', ['if=/dev/zero', `of=${dev.path}`, 'bs=4096', 'count=1', 'oflag=direct'])
    t.not(write.code, 0, 'the write failed')
    const [err] = await error
    t.is(err.code, 'EIO')
    t.regex(err.message, /worker of queue \d exited \(code 7\)/)
    await dev.whenStopped()
    await until(() => deviceGone(dev.id), 'the device is gone')
  })
}

/**
 * A loop module served by `ublk-ts serve` with recovery on (its other
 * arguments `serveArgs`), killed with -9 while fio's verified writes have
 * IO in flight: the dead device's id, the file behind it and fio's run.
 */
async function killedUnderFio(name: string, ...serveArgs: string[]) {
  const file = scratchFile(name, 32 * MiB)
  const server = serve('serve', LOOP_MODULE, '--size', '32M', ...serveArgs, '--recovery', 'reissue', '--', '--file', file)
  const path = await server.path
  const writes = fio(path, { rw: 'randwrite', bs: '4k', iodepth: 8, size: '8M', verify: 'crc32c', extra: ['--rate_iops=500'] })
  await until(() => inFlight(path) > 0, 'fio has IO in flight', 60_000)
  server.child.kill('SIGKILL')
  await server.exited
  return { id: Number(path.replace('/dev/ublkb', '')), file, writes }
}

/**
 * Takes over a device `killedUnderFio` left, with the module again and
 * `options`, and checks the take-over: no queue thread, no IO error in
 * fio's verified run, IOs served by the new server, the device gone
 * after its stop.
 */
async function takeOverWithoutQueueThreads(t: ExecutionContext, killed: Awaited<ReturnType<typeof killedUnderFio>>, options: Omit<RecoverOptions, 'target'>) {
  const { id, file, writes } = killed
  const dev = await recoverDevice(id, { target: { module: LOOP_MODULE, args: { file } }, ...options })
  try {
    t.deepEqual(queueThreadNames(id), [], 'no queue thread serves the recovered device')
    const r = await writes
    t.is(r.errors, 0, 'no IO failed across the kill and the takeover')
    t.true(dev.stats().dispatch!.ios + dev.stats().dispatch!.routedWrites > 0, 'the new server served the IOs after the kill')
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
  t.true(deviceGone(id))
}

test.serial('queueThreads: false: a module killed with -9 under fio verify is taken over by recoverDevice on this thread, with no queue thread; no IO fails', async (t) => {
  await takeOverWithoutQueueThreads(t, await killedUnderFio('hosted-recover', '--queues', '1'), { queueThreads: false })
})

test.serial('workers: a module served with workers is killed with -9 under fio verify; recoverDevice takes it over with workers polling their rings, and no IO fails', async (t) => {
  await takeOverWithoutQueueThreads(t, await killedUnderFio('workers-recover', '--queues', '2', '--workers'), { workers: true })
})
