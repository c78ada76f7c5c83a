// queueThreads: false, a TypeScript target's queue served by this
// thread's event loop with no queue thread (run in ts-targets.test.js).
import { unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice, listDevices, loopTarget, nullTarget, ramdiskTarget, type Target } from '../../../lib/index.ts'

import { runFixture } from '../../helpers/child.ts'
import { rejectsWithCode } from '../../helpers/errors.ts'
import { scratchFile } from '../../helpers/files.ts'
import { fio, verifyAgainstFile } from '../../helpers/fio.ts'
import { deviceGone, queueThreadNames, READER_SKIP, readersRange } from '../../helpers/kernel.ts'
import { sh } from '../../helpers/shell.ts'

const MiB = 1 << 20

test.serial('queueThreads: false: a TypeScript ramdisk with no queue thread, fio crc32c verify at QD 1 and QD 32', async (t) => {
  const dev = await createDevice({ target: ramdiskTarget(), size: 64 * MiB, depth: 64, queueThreads: false })
  try {
    t.deepEqual(queueThreadNames(dev.id), [], 'no queue thread serves the device')
    for (const [bs, iodepth, size] of [['4k', 1, '2M'], ['64k', 32, '16M']] as const) {
      const r = await fio(dev.path, { rw: 'randwrite', bs, iodepth, size, verify: 'crc32c' })
      t.is(r.errors, 0)
      t.true(r.writeIos > 0 && r.readIos > 0, `bs ${bs} QD ${iodepth}: wrote, then read back and verified`)
    }
  } finally {
    await dev.stop()
  }
  t.true(deviceGone(dev.id))
})

test.serial('queueThreads: false: a TypeScript loop target (backend IO on the hosted ring), and the file matches', async (t) => {
  const file = scratchFile('hosted-loop', 32 * MiB)
  const dev = await createDevice({ target: loopTarget(file), size: 32 * MiB, depth: 32, queueThreads: false })
  try {
    const r = await verifyAgainstFile(t, dev.path, file, { rw: 'randrw', bs: '16k', iodepth: 16, size: '16M' })
    t.true(r.writeIos > 0 && r.readIos > 0)
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
  t.true(deviceGone(dev.id))
})

test.serial('queueThreads: false: stop() with IOs held by the target returns and fails them', async (t) => {
  let held = 0
  const target: Target = {
    read(io) {
      // Only the reader's IOs (see readersRange).
      if (!readersRange(io.offset)) return
      held++
      return new Promise<void>(() => {})
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB, ioTimeoutMs: 0, queueThreads: false })
  const reader = sh('dd', [`if=${dev.path}`, 'of=/dev/null', 'bs=4k', `skip=${READER_SKIP}`, 'count=16', 'iflag=direct'])
  while (held === 0) await new Promise((r) => setTimeout(r, 20))
  await dev.stop()
  t.true(deviceGone(dev.id))
  t.not((await reader).code, 0, 'the reader saw its IO fail')
})

test.serial('queueThreads: false: one hosted queue per thread at a time (EBUSY); the next device may take the thread once it is free', async (t) => {
  const first = await createDevice({ target: nullTarget(), size: 8 * MiB, queueThreads: false })
  try {
    await rejectsWithCode(t, createDevice({ target: nullTarget(), size: 8 * MiB, queueThreads: false }), 'EBUSY', /one queue at a time/)
  } finally {
    await first.stop()
  }
  const second = await createDevice({ target: nullTarget(), size: 8 * MiB, queueThreads: false })
  const r = await fio(second.path, { rw: 'randread', bs: '4k', iodepth: 8, size: '4M' })
  await second.stop()
  t.is(r.errors, 0)
  t.true(r.readIos > 0)
  t.false((await listDevices()).some((d) => d.id === first.id || d.id === second.id))
})

test.serial('queueThreads: false: a process that exits without stopping its hosted device leaves no device behind', async (t) => {
  const { id } = await runFixture<{ id: number }>('exit-without-stop-hosted.ts')
  t.true(deviceGone(id), `device ${id} was removed when its process exited`)
})
