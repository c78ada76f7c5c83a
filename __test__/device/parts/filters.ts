// Every filter on a real device: each does to the IO what it says, and the
// data that should come through does.
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs'

import test from 'ava'

import { cow, createDevice, delay, error, log, loopTarget, offset, ramdiskTarget, rate, readonly, stats, withFilters } from '../../../lib/index.ts'
import type { Filter, Target } from '../../../lib/index.ts'

import { scratchFile } from '../../helpers/files.ts'
import { fio } from '../../helpers/fio.ts'
import { requireUblk, sysfsBlock } from '../../helpers/kernel.ts'
import { sh, type Outcome } from '../../helpers/shell.ts'

const MiB = 1 << 20
const SIZE = 16 * MiB

test.before(() => requireUblk())

/** Serves `target` under `filters` for the length of `body`, then removes the device. */
async function withDevice(target: Target, filters: Filter[], body: (path: string) => Promise<void>, size = SIZE): Promise<void> {
  const dev = await createDevice({ size, target: withFilters(target, filters), depth: 32 })
  try {
    await body(dev.path)
  } finally {
    await dev.stop()
  }
}

/** dd with direct IO, timed. */
async function dd(args: string[]): Promise<Outcome & { ms: number }> {
  const started = performance.now()
  const r = await sh('dd', [...args, 'status=none'])
  return { ...r, ms: performance.now() - started }
}

const md5 = (bytes: Uint8Array): string => createHash('md5').update(bytes).digest('hex')

/** `bytes` of random data in a file of its own; returns its path. */
function randomFile(name: string, bytes: number): string {
  const file = `/tmp/ublk-filter-${name}-${process.pid}.bin`
  writeFileSync(file, randomBytes(bytes))
  return file
}

test.serial('filter delay: each read waits the delay on the queue ring, writes do not; data intact', async (t) => {
  const data = randomFile('delay', 16 * 1024)
  try {
    await withDevice(ramdiskTarget(), [delay({ read: 150 })], async (path) => {
      const w = await dd([`if=${data}`, `of=${path}`, 'bs=4k', 'oflag=direct'])
      t.is(w.code, 0, w.stderr)
      const r = await dd([`if=${path}`, 'of=/dev/stdout', 'bs=4k', 'count=4', 'iflag=direct'])
      t.is(r.code, 0, r.stderr)
      t.true(r.ms >= 4 * 150, `4 reads one after another took ${r.ms.toFixed(0)} ms, at least 600 expected`)
      const back = await sh('sh', ['-c', `dd if=${path} bs=4k count=4 iflag=direct status=none | md5sum`])
      t.is(back.stdout.split(' ')[0], md5(readFileSync(data)))
      t.log(`4 reads of 4 KiB in ${r.ms.toFixed(0)} ms; 4 writes in ${w.ms.toFixed(0)} ms`)
    })
  } finally {
    unlinkSync(data)
  }
})

test.serial('filter error: writes into a range fail with the errno named; writes elsewhere and reads succeed', async (t) => {
  await withDevice(ramdiskTarget(), [error({ errno: 'ENOSPC', ops: ['write'], offset: MiB, length: MiB })], async (path) => {
    const outside = await dd(['if=/dev/urandom', `of=${path}`, 'bs=64k', 'count=16', 'oflag=direct'])
    t.is(outside.code, 0, outside.stderr)
    const inside = await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=1', `seek=${(MiB + 8192) / 4096}`, 'oflag=direct'])
    t.not(inside.code, 0)
    t.regex(inside.stderr, /No space left on device/)
    const read = await dd([`if=${path}`, 'of=/dev/null', 'bs=64k', 'count=32', 'iflag=direct'])
    t.is(read.code, 0, read.stderr)
  })
})

test.serial('filter error: a rate of 1 on reads fails every read with EIO; rate 0 fails none', async (t) => {
  await withDevice(ramdiskTarget(), [error({ ops: ['read'], rate: 1 }), error({ ops: ['write'], rate: 0 })], async (path) => {
    t.is((await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=8', 'oflag=direct'])).code, 0)
    const read = await dd([`if=${path}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct'])
    t.not(read.code, 0)
    t.regex(read.stderr, /Input\/output error/)
  })
})

test.serial('filter rate: 4 MiB at 8 MiB/s takes about half a second; the data is intact', async (t) => {
  const data = randomFile('rate', 4 * MiB)
  try {
    await withDevice(ramdiskTarget(), [rate({ bytesPerSecond: 8 * MiB })], async (path) => {
      const w = await dd([`if=${data}`, `of=${path}`, 'bs=256k', 'oflag=direct'])
      t.is(w.code, 0, w.stderr)
      // The first IO goes at once: 15 of 16 wait their turn, 0.47 s.
      t.true(w.ms >= 450, `4 MiB written in ${w.ms.toFixed(0)} ms, at least 450 expected`)
      const back = await sh('sh', ['-c', `dd if=${path} bs=256k count=16 iflag=direct status=none | md5sum`])
      t.is(back.stdout.split(' ')[0], md5(readFileSync(data)))
      t.log(`4 MiB written in ${w.ms.toFixed(0)} ms at a limit of 8 MiB/s`)
    })
  } finally {
    unlinkSync(data)
  }
})

test.serial('filter log: a line per IO with its range and outcome, in the log file', async (t) => {
  const file = `/tmp/ublk-filter-log-${process.pid}.log`
  try {
    await withDevice(ramdiskTarget(), [log({ file }), error({ errno: 'EIO', ops: ['write'], offset: 8 * MiB, length: 4096 })], async (path) => {
      for (const block of [3, 5]) {
        t.is((await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=1', `seek=${block}`, 'oflag=direct'])).code, 0)
      }
      t.not((await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=1', `seek=${(8 * MiB) / 4096}`, 'oflag=direct'])).code, 0)
    })
    const writes = readFileSync(file, 'utf8')
      .split('\n')
      .filter((line) => / write /.test(line))
    t.true(writes.some((l) => /write offset=12288 length=4096 fua=0 ok \d+\.\d+ms$/.test(l)), writes.join('\n'))
    t.true(writes.some((l) => /write offset=20480 length=4096 fua=0 ok /.test(l)), writes.join('\n'))
    t.true(writes.some((l) => /write offset=8388608 length=4096 fua=0 EIO /.test(l)), writes.join('\n'))
  } finally {
    unlinkSync(file)
  }
})

test.serial('filter stats: exact counts of writes and their bytes, reads, errors by errno, printed at stop', async (t) => {
  const lines: string[] = []
  const counter = stats({ write: (line) => lines.push(line) })
  // Over the loop target, whose passthroughs the filter waits for.
  const file = scratchFile('filter-stats', SIZE)
  t.teardown(() => unlinkSync(file))
  await withDevice(loopTarget(file), [counter, error({ errno: 'ENOSPC', ops: ['write'], offset: 15 * MiB })], async (path) => {
    const before = counter.snapshot()
    t.is((await dd(['if=/dev/urandom', `of=${path}`, 'bs=4k', 'count=8', 'oflag=direct'])).code, 0)
    t.is((await dd([`if=${path}`, 'of=/dev/null', 'bs=8k', 'count=3', 'iflag=direct'])).code, 0)
    t.not((await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=1', `seek=${(15 * MiB) / 4096}`, 'oflag=direct'])).code, 0)
    const after = counter.snapshot()
    t.is(after.write.ios - before.write.ios, 9)
    t.is(after.write.bytes - before.write.bytes, 8 * 4096)
    t.deepEqual(after.write.errors, { ENOSPC: 1 })
    // Only this test writes; the kernel reads too (its partition scan
    // after the device starts), so reads are at least what dd read.
    t.true(after.read.ios - before.read.ios >= 3)
    t.true(after.read.bytes - before.read.bytes >= 3 * 8192)
  })
  t.true(lines.some((l) => /^stats at stop: write: \d+ IOs, .*errors ENOSPC 1$/.test(l)), lines.join('\n'))
})

test.serial('filter readonly: the kernel sees a read-only device and refuses writes; reads come through', async (t) => {
  const file = scratchFile('filter-ro', SIZE, 'read me back')
  try {
    await withDevice(loopTarget(file), [readonly()], async (path) => {
      t.true(sysfsBlock(path).readOnly)
      const w = await dd(['if=/dev/zero', `of=${path}`, 'bs=4k', 'count=1', 'oflag=direct'])
      t.not(w.code, 0)
      const r = await sh('dd', [`if=${path}`, 'bs=512', 'count=1', 'iflag=direct', 'status=none'])
      t.true(r.stdout.startsWith('read me back'))
    })
    t.true(readFileSync(file).subarray(0, 12).toString() === 'read me back')
  } finally {
    unlinkSync(file)
  }
})

test.serial('filter offset: the device is a window of the file; reads and writes land inside it, nothing outside changes', async (t) => {
  const file = randomFile('offset', 12 * MiB)
  const whole = readFileSync(file)
  try {
    await withDevice(
      loopTarget(file),
      [offset({ offset: 2 * MiB, length: 8 * MiB })],
      async (path) => {
        const head = await sh('sh', ['-c', `dd if=${path} bs=64k count=16 iflag=direct status=none | md5sum`])
        t.is(head.stdout.split(' ')[0], md5(whole.subarray(2 * MiB, 3 * MiB)))
        const r = await fio(path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '1M', verify: 'crc32c', extra: ['--offset=4M'] })
        t.is(r.errors, 0)
      },
      8 * MiB,
    )
    const after = readFileSync(file)
    t.is(md5(after.subarray(0, 2 * MiB)), md5(whole.subarray(0, 2 * MiB)), 'before the window')
    t.is(md5(after.subarray(2 * MiB, 6 * MiB)), md5(whole.subarray(2 * MiB, 6 * MiB)), 'the window before what fio wrote')
    t.not(md5(after.subarray(6 * MiB, 7 * MiB)), md5(whole.subarray(6 * MiB, 7 * MiB)), 'fio wrote at 4M into the window')
    t.is(md5(after.subarray(7 * MiB, 10 * MiB)), md5(whole.subarray(7 * MiB, 10 * MiB)), 'the window after what fio wrote')
    t.is(md5(after.subarray(10 * MiB)), md5(whole.subarray(10 * MiB)), 'after the window')
  } finally {
    unlinkSync(file)
  }
})

test.serial('filter cow: writes go to the overlay, the base file never changes; reads mix both sector by sector', async (t) => {
  const base = randomFile('cow-base', 8 * MiB)
  const overlay = `/tmp/ublk-filter-cow-${process.pid}.overlay`
  const before = md5(readFileSync(base))
  try {
    await withDevice(
      loopTarget(base),
      [cow({ overlay })],
      async (path) => {
        // 1 KiB written at 9 KiB: a read of the first 16 KiB then takes
        // sectors 0-17 and 20-31 from the base, 18-19 from the overlay.
        const patch = '/tmp/ublk-filter-cow-patch-' + process.pid
        writeFileSync(patch, Buffer.alloc(1024, 0x5a))
        t.is((await dd([`if=${patch}`, `of=${path}`, 'bs=1k', 'seek=9', 'oflag=direct'])).code, 0)
        unlinkSync(patch)
        const expected = Buffer.from(readFileSync(base).subarray(0, 16384))
        expected.fill(0x5a, 9216, 10240)
        const mixed = await sh('sh', ['-c', `dd if=${path} bs=16k count=1 iflag=direct status=none | md5sum`])
        t.is(mixed.stdout.split(' ')[0], md5(expected))
        const r = await fio(path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '4M', verify: 'crc32c', extra: ['--bsrange=1k-64k'] })
        t.is(r.errors, 0)
      },
      8 * MiB,
    )
    t.is(md5(readFileSync(base)), before, 'the base file is unchanged')
  } finally {
    unlinkSync(base)
    unlinkSync(overlay)
  }
})
