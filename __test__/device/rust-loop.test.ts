// The Rust loop target: the yardstick the TypeScript loop is measured against.
import { unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice, loopTarget } from '../../lib/index.ts'

import { rejectsWithCode } from '../helpers/errors.ts'
import { scratchFile } from '../helpers/files.ts'
import { verifyAgainstFile } from '../helpers/fio.ts'
import { requireUblk } from '../helpers/kernel.ts'

const MiB = 1 << 20

test.before(() => requireUblk())

for (const { bs, iodepth, queues } of [{ bs: '128k', iodepth: 8, queues: 2 }]) {
  test.serial(`Rust loop: fio verify, bs ${bs}, QD ${iodepth}, ${queues} queues; the file equals the device`, async (t) => {
    const file = scratchFile('rloop', 32 * MiB)
    const dev = await createDevice({ target: 'loop', path: file, size: 32 * MiB, queues })
    try {
      const r = await verifyAgainstFile(t, dev.path, file, { rw: 'randwrite', bs, iodepth, size: '32M' })
      t.true(r.readIos > 0)
    } finally {
      await dev.stop()
      unlinkSync(file)
    }
  })
}

test.serial('loop targets refuse a device larger than the backing file', async (t) => {
  const file = scratchFile('small', 4 * MiB)
  try {
    await rejectsWithCode(t, createDevice({ target: 'loop', path: file, size: 8 * MiB }), 'EINVAL', /larger than the backing file/)
    await rejectsWithCode(t, createDevice({ target: loopTarget(file), size: 8 * MiB }), 'EINVAL', /less than the device/)
    await rejectsWithCode(t, createDevice({ target: 'loop', size: 8 * MiB }), 'EINVAL', /needs a backing file/)
    await rejectsWithCode(t, createDevice({ target: 'loop', path: '/nonexistent.img', size: 8 * MiB }), 'ENOENT')
  } finally {
    unlinkSync(file)
  }
})
