// Zero copy (UBLK_F_AUTO_BUF_REG), batch IO (UBLK_F_BATCH_IO) and their
// fallbacks, on a real kernel: the Rust loop, the TypeScript loop and the
// RAID1 each verify with fio in zero copy where the running kernel has it,
// on the copy path when forced to it, and on the copy path with batch IO
// where the kernel has it; where the kernel lacks one, asking for it falls
// back to one command per IO on the copy path. The device info names the
// path, and agrees with the flags the kernel reports for the device.
// (Run in lifecycle.test.ts's process.)
import { unlinkSync } from 'node:fs'

import test, { type ExecutionContext } from 'ava'

import binding from '../../../lib/binding.ts'
import { createDevice, createRaid1, loopTarget, type BackingFile, type Device, type Target } from '../../../lib/index.ts'

import { scratchFile } from '../../helpers/files.ts'
import { fio, verifyAgainstFile } from '../../helpers/fio.ts'
import { DATA_OFFSET, digestRange } from '../../helpers/raid1.ts'
import { sh } from '../../helpers/shell.ts'

const MiB = 1 << 20
const SIZE = 16 * MiB


/** Whether the running kernel has a feature, known before the tests are declared. */
function kernelHas(name: string): boolean {
  try {
    return binding.kernelFeatures().names.includes(name)
  } catch {
    return false // no ublk here: requireUblk() says so
  }
}
const kernelZeroCopy = kernelHas('auto_buf_reg')
const kernelBatchIo = kernelHas('batch_io')

/** What a device is asked to run. */
interface PathOptions {
  zeroCopy: boolean
  batchIo: boolean
}

/** The path a device must run, and the kernel's own flags say the same. */
async function expectPath(t: ExecutionContext, dev: Device, asked: PathOptions): Promise<void> {
  const info = await dev.info()
  const zeroCopy = asked.zeroCopy && kernelZeroCopy
  const batchIo = asked.batchIo && !zeroCopy && kernelBatchIo
  t.is(info.zeroCopy, zeroCopy, `runs ${zeroCopy ? 'zero copy' : 'the copy path'}`)
  t.is(info.batchIo, batchIo, `runs ${batchIo ? 'batch IO' : 'one command per IO'}`)
  t.is(info.flags.includes('auto_buf_reg'), zeroCopy, 'as the kernel reports the device')
  t.is(info.flags.includes('batch_io'), batchIo, 'as the kernel reports the device')
}

/**
 * Declares `body` for zero copy asked, for the copy path forced, and for
 * the copy path with batch IO asked. Where the kernel has no zero copy the
 * first two are the same path: the forced one is skipped, and reported so.
 * Where it has no batch IO, asking for it must fall back: that runs for
 * one system (`fallback`), and is skipped for the others, whose copy path
 * the first variant already ran.
 */
function eachPath(name: string, body: (t: ExecutionContext, asked: PathOptions) => Promise<void>, fallback = false): void {
  test.serial(`${name}, zero copy where the kernel has it`, (t) => body(t, { zeroCopy: true, batchIo: false }))
  const forced = kernelZeroCopy ? test.serial : test.skip
  forced(`${name}, copy path forced`, (t) => body(t, { zeroCopy: false, batchIo: false }))
  const batch = kernelBatchIo || fallback ? test.serial : test.skip
  batch(`${name}, copy path with batch IO where the kernel has it`, (t) => body(t, { zeroCopy: false, batchIo: true }))
}

const jobs = [
  { rw: 'randwrite', bs: '128k', iodepth: 8, size: '16M' },
  { rw: 'randwrite', bs: '4k', iodepth: 32, size: '2M' },
] as const

for (const [name, target] of [
  ['Rust loop', (_file: string) => 'loop' as const],
  ['TypeScript loop', (file: string) => loopTarget(file)],
] as const) {
  eachPath(`${name}: fio verify, the file equals the device`, async (t, asked) => {
    const file = scratchFile(`zc-${name.replace(' ', '-')}`, SIZE)
    // Two queues: each queue thread registers its own IOs' pages, or runs
    // its own batch transport.
    const dev = await createDevice({ target: target(file), path: file, size: SIZE, queues: 2, ...asked })
    try {
      await expectPath(t, dev, asked)
      for (const job of jobs) {
        const r = await verifyAgainstFile(t, dev.path, file, job)
        t.true(r.writeIos > 0 && r.readIos > 0, `${job.bs}`)
      }
    } finally {
      await dev.stop()
      unlinkSync(file)
    }
  }, name === 'Rust loop')
}

eachPath('RAID1: fio verify through the mirror, members identical', async (t, asked) => {
  const [a, b] = [0, 1].map((i) => scratchFile(`zc-raid1-${i}`, SIZE + MiB))
  const md = await createRaid1({ members: [a!, b!], chunkSize: '64k', depth: 64, ...asked })
  try {
    await expectPath(t, md.device, asked)
    for (const job of jobs) {
      const r = await fio(md.path, { ...job, verify: 'crc32c' })
      t.is(r.errors, 0, `${job.bs}`)
      t.true(r.writeIos > 0 && r.readIos > 0)
    }
  } finally {
    await md.stop()
  }
  t.is(digestRange(a!, DATA_OFFSET, SIZE), digestRange(b!, DATA_OFFSET, SIZE), 'the members hold the same data')
  for (const f of [a!, b!]) unlinkSync(f)
})

test.serial('a zeroCopy target: io.buffer throws EOPNOTSUPP, a write from a read is EINVAL on every kernel; the device keeps serving', async (t) => {
  const file = scratchFile('zc-touchy', SIZE)
  let backing: BackingFile | undefined
  let refused: unknown
  const touchy: Target = {
    name: 'touchy',
    zeroCopy: true,
    async open(ctx) {
      backing = await ctx.openFile(file)
    },
    async read(io) {
      if (io.offset === 0) io.buffer.fill(1)
      if (io.offset === 4096) refused = await io.writeTo(backing!, 0).catch((e: { code?: string }) => e.code)
      await io.readFrom(backing!, io.offset)
    },
  }
  const dev = await createDevice({ target: touchy, size: SIZE })
  try {
    await expectPath(t, dev, { zeroCopy: true, batchIo: false })
    const bad = await sh('dd', [`if=${dev.path}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct'])
    t.not(bad.code, 0)
    t.regex(bad.stderr, /Operation not supported/)
    const good = await sh('dd', [`if=${dev.path}`, 'of=/dev/null', 'bs=4k', 'count=16', 'skip=1', 'iflag=direct'])
    t.is(good.code, 0, good.stderr)
    t.is(refused, 'EINVAL', "a read's data is never written out")
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})
