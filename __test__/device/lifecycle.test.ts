// Real ublk devices in a real kernel: what the library reports is checked
// against sysfs and /dev, and IO goes through the block layer with fio.
import { existsSync, unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice, deleteDevice, deviceInfo, kernelFeatures, listDevices, loopTarget } from '../../lib/index.ts'

import { runFixture } from '../helpers/child.ts'
import { rejectsWithCode } from '../helpers/errors.ts'
import { scratchFile } from '../helpers/files.ts'
import { fio } from '../helpers/fio.ts'
import { deviceGone, requireUblk, sysfsBlock } from '../helpers/kernel.ts'
import { until } from '../helpers/poll.ts'

// In this file's process (each test file costs its own ava worker, 6 to
// 7 s of start-up in the VM): what crosses the napi boundary, checked
// request by request; the Rust core's batch hook, through the journaled
// loop example; zero copy; the CLI and the examples; the package as npm
// installs it; IO figures, ublk-ts stats and the metrics endpoint.
import './parts/boundary.ts'
import './parts/rust-batch-hook.ts'
import './parts/zero-copy.ts'
import './parts/cli.ts'
import './parts/examples.ts'
import './parts/packed-install.ts'
import './parts/metrics.ts'

const MiB = 1 << 20
const GiB = 1 << 30

test.before(() => requireUblk())

test.serial('a null device appears with the requested geometry, serves fio, and disappears', async (t) => {
  const dev = await createDevice({ target: 'null', size: GiB, queues: 1, depth: 64 })
  t.log(`created ${dev.path}`)
  t.regex(dev.path, /^\/dev\/ublkb\d+$/)
  t.true(existsSync(dev.path))

  const facts = sysfsBlock(dev.path)
  t.is(facts.sizeBytes, GiB)
  t.is(facts.logicalBlockSize, 512)
  t.is(facts.hwQueues, 1)

  const info = await dev.info()
  t.is(info.state, 'live')
  t.is(info.size, GiB)
  t.is(info.queues, 1)
  t.is(info.depth, 64)
  t.is(info.serverPid, process.pid)
  t.is(info.blockPath, dev.path)

  const result = await fio(dev.path, { rw: 'randrw', bs: '4k', iodepth: 32, size: '256M', runtime: 3 })
  t.log(`fio randrw 4k QD32: ${Math.round(result.readIops)} read + ${Math.round(result.writeIops)} write IOPS`)
  t.is(result.errors, 0)
  t.true(result.readIos > 0 && result.writeIos > 0)

  await dev.stop()
  t.true(dev.stopped)
  t.true(deviceGone(dev.id), 'device nodes are gone')
  t.false((await listDevices()).some((d) => d.id === dev.id), 'device is gone from the list')
  await dev.stop() // a second stop is a no-op
})

test.serial('block size 4096, two queues and depth 128 reach the kernel', async (t) => {
  const features = await kernelFeatures()
  const queues = Math.min(2, features.maxQueues)
  const dev = await createDevice({ target: 'null', size: 256 << 20, logicalBlockSize: 4096, queues, depth: 128 })
  try {
    const facts = sysfsBlock(dev.path)
    t.is(facts.logicalBlockSize, 4096)
    t.is(facts.physicalBlockSize, 4096)
    t.is(facts.hwQueues, queues)
    t.is(facts.sizeBytes, 256 << 20)
    const info = await dev.info()
    t.is(info.depth, 128)
    t.is(info.logicalBlockSize, 4096)
    const result = await fio(dev.path, { rw: 'randread', bs: '4k', iodepth: 128, size: '128M', runtime: 2, numjobs: queues })
    t.is(result.errors, 0)
    t.true(result.readIos > 0)
  } finally {
    await dev.stop()
  }
  t.true(deviceGone(dev.id))
})

test.serial('two devices at once: list and info agree with the kernel', async (t) => {
  const a = await createDevice({ target: 'null', size: 128 << 20 })
  const b = await createDevice({ target: 'null', size: 512 << 20, logicalBlockSize: 4096 })
  try {
    t.not(a.id, b.id)
    const listed = await listDevices()
    for (const dev of [a, b]) {
      const entry = listed.find((d) => d.id === dev.id)
      t.truthy(entry, `device ${dev.id} is listed`)
      const facts = sysfsBlock(dev.path)
      t.is(entry?.size, facts.sizeBytes)
      t.is(entry?.logicalBlockSize, facts.logicalBlockSize)
      t.is(entry?.queues, facts.hwQueues)
      t.is(entry?.state, 'live')
      t.deepEqual(await deviceInfo(dev.id), entry)
    }
    await a.stop()
    t.true(deviceGone(a.id))
    t.true(existsSync(b.path), 'stopping one device leaves the other')
    t.is((await b.info()).state, 'live')
  } finally {
    await a.stop()
    await b.stop()
  }
  const ids = (await listDevices()).map((d) => d.id)
  t.false(ids.includes(a.id) || ids.includes(b.id))
})

test.serial('kernel features name what the driver supports', async (t) => {
  const features = await kernelFeatures()
  t.log(`kernel features: ${features.names.join(', ')}`)
  t.true(features.names.length > 0)
  t.true(features.names.includes('user_copy'), 'Linux 6.5+ has user copy')
  t.is(typeof features.mask, 'bigint')
  t.true(features.maxQueues >= 1)
  t.is(features.maxDepth, 4096)
})

test.serial('deleteDevice stops a device this process serves', async (t) => {
  const dev = await createDevice({ target: 'null', size: 64 << 20 })
  await deleteDevice(dev.id)
  t.true(dev.stopped)
  t.true(deviceGone(dev.id))
  await rejectsWithCode(t, dev.info(), 'ENODEV', /was stopped/)
})

test.serial('a device that does not exist: ENODEV', async (t) => {
  const unused = 1048575
  await rejectsWithCode(t, deleteDevice(unused), 'ENODEV', /no ublk device with id 1048575/)
  await rejectsWithCode(t, deviceInfo(unused), 'ENODEV', /no ublk device with id 1048575/)
})

test.serial('an id already taken: EEXIST, and the first device is untouched', async (t) => {
  const dev = await createDevice({ target: 'null', size: 64 << 20 })
  try {
    await rejectsWithCode(t, createDevice({ target: 'null', size: 64 << 20, id: dev.id }), 'EEXIST', /already exists/)
    t.is((await dev.info()).state, 'live')
  } finally {
    await dev.stop()
  }
})

test.serial('queues above the kernel limit: EINVAL', async (t) => {
  const { maxQueues } = await kernelFeatures()
  await rejectsWithCode(t, createDevice({ target: 'null', size: GiB, queues: maxQueues + 1 }), 'EINVAL', /queues must be between 1 and/)
})

test.serial('without root: EACCES, and the process goes on', async (t) => {
  const codes = await runFixture<{ create: string; list: string }>('as-nobody.ts')
  t.is(codes.create, 'EACCES')
  t.is(codes.list, 'EACCES')
})

test.serial('a read-only /run: creating a device fails with EROFS at once and leaves nothing behind', async (t) => {
  const before = (await listDevices()).map((d) => d.id)
  // A private mount namespace in which /run is a read-only bind mount of itself.
  const readOnlyRun = ['unshare', '-m', 'sh', '-c', 'mount --bind /run /run && mount -o remount,bind,ro /run && exec "$@"', 'sh']
  const outcome = await runFixture<Record<'rust' | 'typescript', { code: string; ms: number }>>('readonly-run.ts', readOnlyRun)
  t.log(`Rust target: ${outcome.rust.code} in ${outcome.rust.ms} ms; TypeScript target: ${outcome.typescript.code} in ${outcome.typescript.ms} ms`)
  for (const { code, ms } of [outcome.rust, outcome.typescript]) {
    t.true(code === 'EROFS' || code === 'EACCES', `failed with ${code}`)
    t.true(ms < 20_000, `in ${ms} ms`)
  }
  t.deepEqual((await listDevices()).map((d) => d.id), before, 'no device was left behind')
})

test.serial("a device deleted by another process: its server warns, naming it, lets go of it and emits 'state'", async (t) => {
  const dev = await createDevice({ target: 'null', size: 64 << 20, queues: 2 })
  const states: string[] = []
  dev.on('state', (state) => states.push(state))
  const warnings: Error[] = []
  const onWarning = (w: Error) => warnings.push(w)
  process.on('warning', onWarning)
  try {
    const other = await runFixture<{ code: string }>('delete-device.ts', ['env', `UBLK_DELETE_ID=${dev.id}`])
    t.is(other.code, 'ok')
    await until(() => dev.stopped, 'the server lets go of the device')
    await until(() => warnings.some((w) => w.message.includes(`ublk device ${dev.id}`)), 'a warning names the device')
    const warning = warnings.find((w) => w.message.includes(`ublk device ${dev.id}`))!
    t.is(warning.name, 'UblkWarning')
    t.log(warning.message)
    t.true(deviceGone(dev.id))
    await until(() => states.length > 0, "the device emits 'state'")
    t.deepEqual(states, ['stopped'])
  } finally {
    process.off('warning', onWarning)
    await dev.stop()
  }
})

test.serial('a process that exits without stopping leaves no device behind', async (t) => {
  const { id } = await runFixture<{ id: number; path: string }>('exit-without-stop.ts')
  t.true(deviceGone(id), `device ${id} was removed when its process exited`)
  t.false((await listDevices()).some((d) => d.id === id))
})

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
