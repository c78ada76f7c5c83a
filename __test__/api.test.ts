// Runs on every machine, with or without a ublk driver: bad input must be
// refused with EINVAL before the kernel is asked anything.
import { existsSync } from 'node:fs'

import test from 'ava'

import { createDevice, createRaid1, deleteDevice, deviceInfo, kernelFeatures, listDevices, recoverDevice } from '../lib/index.ts'
import type { DeviceOptions } from '../lib/index.ts'

import { rejectsWithCode } from './helpers/errors.ts'

const GiB = 1 << 30
const valid: DeviceOptions = { target: 'null', size: GiB }
const haveUblk = existsSync('/dev/ublk-control')

const badOptions: Array<[string, Record<string, unknown>, RegExp]> = [
  ['size 0', { size: 0 }, /size must be greater than 0/],
  ['size not a multiple of the block size', { size: GiB + 100 }, /not a multiple of the logical block size 512/],
  ['size a multiple of 512 but not of 4096', { size: 4096 * 8 + 512, logicalBlockSize: 4096 }, /multiple/],
  ['negative size', { size: -4096 }, /size must be an integer/],
  ['fractional size', { size: 4096.5 }, /size must be an integer/],
  ['size beyond 2^53', { size: 2 ** 60 }, /size must be an integer/],
  ['block size 256', { logicalBlockSize: 256 }, /512, 1024, 2048 or 4096/],
  ['block size 8192', { logicalBlockSize: 8192 }, /512, 1024, 2048 or 4096/],
  ['block size not a power of two', { logicalBlockSize: 1536 }, /512, 1024, 2048 or 4096/],
  ['depth 0', { depth: 0 }, /depth must be between 1 and 4096/],
  ['depth 4097', { depth: 4097 }, /depth must be between 1 and 4096/],
  ['depth past u16', { depth: 70000 }, /depth must be an integer/],
  ['queues 0', { queues: 0 }, /queues must be between 1 and/],
  ['queues above the kernel limit', { queues: 4000 }, /queues must be between 1 and \d+ \(one per possible CPU\)/],
  ['max IO size not page aligned', { maxIoBytes: 5000 }, /max IO size/],
  ['device id out of range', { id: 2 ** 21 }, /device id must be below/],
  ['size of the wrong type', { size: '1G' }, /size/],
]

for (const [name, patch, message] of badOptions) {
  test(`createDevice refuses ${name} with EINVAL`, async (t) => {
    await rejectsWithCode(t, createDevice({ ...valid, ...patch } as unknown as DeviceOptions), 'EINVAL', message)
  })
}

test('createDevice refuses an unknown target with EINVAL', async (t) => {
  await rejectsWithCode(
    t,
    createDevice({ ...valid, target: 'raid7' as 'null' }),
    'EINVAL',
    /unknown target "raid7"/,
  )
})

test('queueThreads: false is refused with EINVAL where no one thread can serve the queue', async (t) => {
  const ts = { name: 'x', read() {} }
  await rejectsWithCode(t, createDevice({ target: 'null', size: 1 << 20, queueThreads: false }), 'EINVAL', /built-in target/)
  await rejectsWithCode(t, createDevice({ target: ts, size: 1 << 20, queues: 2, queueThreads: false }), 'EINVAL', /served by workers/)
  await rejectsWithCode(t, createDevice({ target: ts, size: 1 << 20, batchIo: true, queueThreads: false }), 'EINVAL', /batch IO/)
  await rejectsWithCode(t, createDevice({ target: ts, size: 1 << 20, queueThreads: 'no' as unknown as boolean }), 'EINVAL', /true or false/)
  // recoverDevice checks the same before it claims anything (no such device is needed).
  await rejectsWithCode(t, recoverDevice(9999, { target: 'null', queueThreads: false }), 'EINVAL', /built-in target/)
  await rejectsWithCode(t, recoverDevice(9999, { target: ts, queueThreads: 0 as unknown as boolean }), 'EINVAL', /true or false/)
})

test('createDevice refuses a missing options object with EINVAL', async (t) => {
  await rejectsWithCode(t, createDevice(undefined as unknown as DeviceOptions), 'EINVAL')
})

test('ids that are not device ids are refused with EINVAL', async (t) => {
  await rejectsWithCode(t, deviceInfo(-1), 'EINVAL', /id must be an integer/)
  await rejectsWithCode(t, deleteDevice(1.5), 'EINVAL', /id must be an integer/)
  await rejectsWithCode(t, deleteDevice(2 ** 21), 'EINVAL', /device id must be below/)
})

// Only meaningful where the driver is missing; skipped (and reported so) elsewhere.
const withoutUblk = haveUblk ? test.skip : test

withoutUblk('without a ublk driver every device call fails with ENOENT and says why', async (t) => {
  const why = /\/dev\/ublk-control does not exist.*modprobe ublk_drv/
  await rejectsWithCode(t, createDevice(valid), 'ENOENT', why)
  await rejectsWithCode(t, listDevices(), 'ENOENT', why)
  await rejectsWithCode(t, deviceInfo(0), 'ENOENT', why)
  await rejectsWithCode(t, deleteDevice(0), 'ENOENT', why)
  await rejectsWithCode(t, kernelFeatures(), 'ENOENT', why)
})

test('createRaid1 with recover is EINVAL: taking a device over is assembleRaid1', async (t) => {
  await rejectsWithCode(t, createRaid1({ members: ['/nonexistent-a', '/nonexistent-b'], recover: 0 }), 'EINVAL', /use assembleRaid1 with recover/)
})
