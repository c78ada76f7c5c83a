// Targets written in TypeScript, served through the batched bridge, on a
// real kernel: data written through the block device reads back intact.
import { existsSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs'

import test from 'ava'

import { createDevice, listDevices, loopTarget, ramdiskTarget, withIoDelay } from '../../lib/index.ts'
import type { BackingFile, DeviceOptions, Io, Target } from '../../lib/index.ts'

import { rejectsWithCode } from '../helpers/errors.ts'
import { scratchFile } from '../helpers/files.ts'
import { fio, verifyAgainstFile } from '../helpers/fio.ts'
import { deviceGone, READER_SKIP, readersRange, requireUblk, sysfsBlock } from '../helpers/kernel.ts'
import { ddRead, sh } from '../helpers/shell.ts'

// In this file's process (one test process fewer in the VM): every filter over a TypeScript target.
import './parts/filters.ts'
// And targets given as modules, a worker thread per queue.
import './parts/workers.ts'
import './parts/event-loop.ts'

const MiB = 1 << 20

test.before(() => requireUblk())

const verifyMatrix = [
  // QD 1 with 512-byte IOs is a round trip per sector: keep it small.
  { bs: '512', iodepth: 1, queues: 1, size: '256K' },
  { bs: '4k', iodepth: 32, queues: 1, size: '16M' },
  { bs: '64k', iodepth: 128, queues: 2, size: '16M' },
  { bs: '1M', iodepth: 4, queues: 2, size: '16M' },
] as const

/**
 * The targets the verify matrix runs on (the rows of it they run, all by
 * default), each with what it needs set up. The ramdisk runs the rows of
 * one queue at QD 1 and of two at QD 128; the Rust loop only the sub-block
 * row here: its larger IOs, and the TypeScript loop's file-equals-device
 * check, are in parts/zero-copy.ts.
 */
const verifyTargets: Array<{ name: string; rows?: number[]; make(): { target: DeviceOptions['target']; path?: string; cleanup(): void } }> = [
  { name: 'TypeScript ramdisk', rows: [0, 2], make: () => ({ target: ramdiskTarget(), cleanup() {} }) },
  {
    name: 'TypeScript loop',
    make() {
      const file = scratchFile('verify-ts', 64 * MiB)
      return { target: loopTarget(file), cleanup: () => unlinkSync(file) }
    },
  },
  {
    name: 'Rust loop',
    rows: [0],
    make() {
      const file = scratchFile('verify-rust', 64 * MiB)
      return { target: 'loop', path: file, cleanup: () => unlinkSync(file) }
    },
  },
]

for (const { name, rows, make } of verifyTargets) {
  for (const { bs, iodepth, queues, size } of verifyMatrix.filter((_row, i) => !rows || rows.includes(i))) {
    test.serial(`${name}: fio crc32c verify, bs ${bs}, QD ${iodepth}, ${queues} queue(s)`, async (t) => {
      const { target, path, cleanup } = make()
      const dev = await createDevice({ target, path, size: 64 * MiB, queues, depth: 128 })
      try {
        t.is(sysfsBlock(dev.path).hwQueues, queues)
        const r = await fio(dev.path, { rw: 'randwrite', bs, iodepth, size, verify: 'crc32c', numjobs: 1 })
        t.is(r.errors, 0)
        t.true(r.writeIos > 0 && r.readIos > 0, 'wrote, then read back and verified')
      } finally {
        await dev.stop()
        cleanup()
      }
      t.true(deviceGone(dev.id))
    })
  }
}

test.serial('TypeScript loop: discard punches holes in the backing file', async (t) => {
  const file = scratchFile('discard', 16 * MiB)
  const dev = await createDevice({ target: loopTarget(file), size: 16 * MiB })
  try {
    t.true(sysfsBlock(dev.path).discardMaxBytes > 0, 'the device advertises discard')
    const write = await sh('dd', ['if=/dev/urandom', `of=${dev.path}`, 'bs=1M', 'count=8', 'oflag=direct', 'conv=nocreat'])
    t.is(write.code, 0, write.stderr)
    const before = statSync(file).blocks
    const discard = await sh('blkdiscard', ['-o', '0', '-l', String(4 * MiB), dev.path])
    t.is(discard.code, 0, discard.stderr)
    const after = statSync(file).blocks
    t.log(`allocated 512-byte blocks: ${before} before, ${after} after discarding 4 MiB`)
    t.true(before - after >= (4 * MiB) / 512 - 8, 'about 4 MiB were deallocated')
    const head = readFileSync(file).subarray(0, 4 * MiB)
    t.true(head.every((b) => b === 0), 'the discarded range reads as zeroes')
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})

test.serial('ext4 on a TypeScript loop device, mounted from another mount namespace', async (t) => {
  const file = scratchFile('ext4', 64 * MiB)
  const dev = await createDevice({ target: loopTarget(file), size: 64 * MiB, queues: 2 })
  try {
    const script = [
      'set -e',
      `mkfs.ext4 -q -F ${dev.path}`,
      'mnt=$(mktemp -d)',
      `mount ${dev.path} "$mnt"`,
      'for i in 1 2 3 4; do head -c 3000000 /dev/urandom > "$mnt/f$i"; done',
      '(cd "$mnt" && sha256sum f1 f2 f3 f4) > /tmp/sums.before',
      'umount "$mnt"',
      `mount ${dev.path} "$mnt"`,
      '(cd "$mnt" && sha256sum -c --quiet /tmp/sums.before)',
      'umount "$mnt"',
      'echo verified',
    ].join('\n')
    const r = await sh('unshare', ['-m', 'sh', '-c', script], 300_000)
    t.is(r.code, 0, r.stderr)
    t.regex(r.stdout, /verified/)
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})

function failing(errorFor: (io: Io) => unknown): Target {
  const ram = ramdiskTarget()
  return {
    ...ram,
    read(io) {
      const err = errorFor(io)
      if (err) throw err
      return ram.read(io)
    },
  }
}

test.serial('a throw fails that IO with EIO, or with the errno the error names', async (t) => {
  const target = failing((io) => {
    if (io.offset === 0) return new Error('plain failure')
    if (io.offset === MiB) return Object.assign(new Error('full'), { code: 'ENOSPC' })
    return undefined
  })
  const dev = await createDevice({ target, size: 8 * MiB })
  try {
    const plain = await ddRead(dev.path, 0)
    t.not(plain.code, 0)
    t.regex(plain.stderr, /Input\/output error/)
    const nospc = await ddRead(dev.path, MiB)
    t.not(nospc.code, 0)
    t.regex(nospc.stderr, /No space left on device/)
    const fine = await ddRead(dev.path, 2 * MiB)
    t.is(fine.code, 0, 'other IOs still work')
    t.is((await dev.info()).state, 'live')
  } finally {
    await dev.stop()
  }
})

test.serial('an IO the target never answers is failed after ioTimeoutMs, and its io.signal aborted with ETIMEDOUT', async (t) => {
  const ram = ramdiskTarget()
  let abortedWith: unknown
  const target: Target = {
    ...ram,
    read(io) {
      if (io.offset === 4 * MiB) {
        io.signal.addEventListener('abort', () => (abortedWith = io.signal.reason))
        return new Promise<void>(() => {})
      }
      return ram.read(io)
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB, ioTimeoutMs: 500 })
  try {
    const started = Date.now()
    const stuck = await ddRead(dev.path, 4 * MiB)
    const took = Date.now() - started
    t.not(stuck.code, 0)
    t.log(`failed after ${took} ms: ${stuck.stderr.split('\n')[0]}`)
    t.true(took < 10_000)
    t.is((abortedWith as { code?: string } | undefined)?.code, 'ETIMEDOUT')
    t.is((await ddRead(dev.path, 0)).code, 0, 'the device goes on serving')
  } finally {
    await dev.stop()
  }
})

test.serial('stop() with IOs outstanding returns, fails them, aborts their io.signal, and leaves no device', async (t) => {
  let held = 0
  const signals: AbortSignal[] = []
  const target: Target = {
    read(io) {
      // Only the reader's IOs are held: the kernel reads the partition
      // table as the device starts, and on 7.x may still be at it after
      // it started; those reads (near the start and the end) are answered.
      if (!readersRange(io.offset)) return
      held++
      signals.push(io.signal)
      return new Promise<void>(() => {})
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB, ioTimeoutMs: 0 })
  const reader = sh('dd', [`if=${dev.path}`, 'of=/dev/null', 'bs=4k', `skip=${READER_SKIP}`, 'count=64', 'iflag=direct'])
  while (held === 0) await new Promise((r) => setTimeout(r, 20))
  const started = Date.now()
  await dev.stop()
  t.log(`stop took ${Date.now() - started} ms with ${held} IO(s) held by the target`)
  t.true(deviceGone(dev.id))
  t.false((await listDevices()).some((d) => d.id === dev.id))
  t.true(signals.length > 0 && signals.every((s) => s.aborted && (s.reason as { code?: string }).code === 'ECANCELED'))
  const r = await reader
  t.not(r.code, 0, 'the reader saw its IO fail')
})

test.serial('a buffer view kept after its IO completed is detached, not aliased', async (t) => {
  let kept: Uint8Array | undefined
  const ram = ramdiskTarget()
  const target: Target = {
    ...ram,
    read(io) {
      kept ??= io.buffer
      return ram.read(io)
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB })
  try {
    t.is((await ddRead(dev.path, 0)).code, 0)
    t.truthy(kept)
    t.is(kept!.byteLength, 0, 'the view no longer reaches the IO buffer')
    t.throws(() => kept!.fill(0xff), { instanceOf: TypeError }, 'writing through it throws, touching nothing')
    const w = await sh('sh', ['-c', `head -c 4096 /dev/zero | tr '\\0' 'a' | dd of=${dev.path} bs=4k count=1 oflag=direct conv=nocreat`])
    t.is(w.code, 0, w.stderr)
    const r = await sh('sh', ['-c', `dd if=${dev.path} bs=4k count=1 iflag=direct 2>/dev/null | tr -d a | wc -c`])
    t.is(r.stdout.trim(), '0', 'data written after is intact')
  } finally {
    await dev.stop()
  }
  t.is(existsSync(dev.path), false)
})

/** A loop target on the explicit readFrom / writeTo / fdatasync calls. */
function explicitLoop(path: string): Target {
  let file: BackingFile | undefined
  return {
    async open(ctx) {
      file = await ctx.openFile(path)
    },
    async read(io) {
      let done = 0
      while (done < io.length) {
        const n = await io.readFrom(file!, io.offset + done, done, io.length - done)
        if (n === 0) return void io.buffer.fill(0, done)
        done += n
      }
    },
    async write(io) {
      let done = 0
      while (done < io.length) done += await io.writeTo(file!, io.offset + done, done, io.length - done)
    },
    async flush(io) {
      await io.fdatasync(file!)
    },
  }
}

test.serial('a target on readFrom/writeTo: fio verify, and the file matches', async (t) => {
  const file = scratchFile('explicit', 16 * MiB)
  const dev = await createDevice({ target: explicitLoop(file), size: 16 * MiB, queues: 2 })
  try {
    await verifyAgainstFile(t, dev.path, file, { rw: 'randwrite', bs: '16k', iodepth: 16, size: '16M' })
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})

test.serial('write route: TypeScript loop writes never reach JavaScript; a routed write that fails reaches the target with io.failedWrite', async (t) => {
  const file = scratchFile('write-route', 16 * MiB)
  const dev = await createDevice({ target: loopTarget(file), size: 16 * MiB })
  try {
    const r = await verifyAgainstFile(t, dev.path, file, { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M' })
    const dispatch = dev.stats().dispatch!
    t.true(dispatch.routedWrites >= r.writeIos, `${dispatch.routedWrites} routed writes for fio's ${r.writeIos}`)
    t.true(dispatch.ios < 10, `${dispatch.ios} IOs reached JavaScript`)
  } finally {
    await dev.stop()
    unlinkSync(file)
  }

  // Routed to a file opened read-only, every write fails there (EROFS) and
  // reaches the target, which writes it to the other file instead.
  const [routedTo, landsIn] = [scratchFile('write-route-ro', 4 * MiB), scratchFile('write-route-rw', 4 * MiB)]
  const failures: string[] = []
  let other: BackingFile | undefined
  const fallback: Target = {
    zeroCopy: true,
    async open(ctx) {
      ctx.routeWrites({ file: await ctx.openFile(routedTo, { readOnly: true }) })
      other = await ctx.openFile(landsIn)
    },
    read: (io) => io.passthrough(other!, io.offset),
    write(io) {
      failures.push((io.failedWrite?.error as { code?: string } | undefined)?.code ?? 'none')
      io.passthrough(other!, io.offset)
    },
  }
  const second = await createDevice({ target: fallback, size: 4 * MiB })
  try {
    const pattern = Buffer.alloc(1 * MiB, 0x5a)
    writeFileSync(`${landsIn}.pattern`, pattern)
    const dd = await sh('dd', [`if=${landsIn}.pattern`, `of=${second.path}`, 'bs=64k', 'oflag=direct', 'status=none'])
    t.is(dd.code, 0, dd.stderr)
    t.true(failures.length > 0)
    t.deepEqual([...new Set(failures)], ['EROFS'], 'each write failed on the route, then reached the target')
    t.true(readFileSync(landsIn).subarray(0, MiB).equals(pattern), 'the target wrote them elsewhere')
    t.true(readFileSync(routedTo).subarray(0, MiB).every((b) => b === 0), 'nothing reached the read-only file')
  } finally {
    await second.stop()
    for (const f of [routedTo, landsIn, `${landsIn}.pattern`]) unlinkSync(f)
  }

  // A target with batch hooks must see every write: no write route.
  const hooked: Target = {
    async open(ctx) {
      ctx.routeWrites({ file: await ctx.openFile(routedTo.replace('-ro', '-hooked'), {}) })
    },
    read() {},
    write() {},
    beforeWrites() {},
  }
  writeFileSync(routedTo.replace('-ro', '-hooked'), Buffer.alloc(4 * MiB))
  try {
    await rejectsWithCode(t, createDevice({ target: hooked, size: 4 * MiB }), 'EINVAL', /batch hooks/)
  } finally {
    unlinkSync(routedTo.replace('-ro', '-hooked'))
  }
})

test.serial("an Io kept after it completed cannot reach its tag's next IO", async (t) => {
  const file = scratchFile('stale', 8 * MiB, 'x'.repeat(4096))
  let stale: Io | undefined
  let backing: BackingFile | undefined
  const ram = ramdiskTarget()
  const target: Target = {
    ...ram,
    async open(ctx) {
      backing = await ctx.openFile(file)
    },
    read(io) {
      stale ??= io
      return ram.read(io)
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB, depth: 1 })
  try {
    t.is((await ddRead(dev.path, 0)).code, 0)
    t.truthy(stale)
    t.throws(() => stale!.passthrough(backing!, 0), { code: 'EINVAL' })
    // Keep the tag busy with a new IO while the stale object tries again.
    const reader = ddRead(dev.path, 4096)
    await t.throwsAsync(stale!.readFrom(backing!, 0), { code: 'ESTALE' })
    t.is((await reader).code, 0)
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})

test.serial('withIoDelay: IOs wait on io_uring timeouts, finish out of order, and data stays intact', async (t) => {
  const fixed = await createDevice({ target: withIoDelay(ramdiskTarget(), 300, () => 1), size: 8 * MiB })
  try {
    const started = Date.now()
    t.is((await ddRead(fixed.path, MiB)).code, 0)
    const took = Date.now() - started
    t.log(`one read with a 300 ms delay took ${took} ms`)
    t.true(took >= 300, 'the delay happened')
  } finally {
    await fixed.stop()
  }
  const dev = await createDevice({ target: withIoDelay(ramdiskTarget(), 5), size: 32 * MiB, queues: 2 })
  try {
    const r = await fio(dev.path, { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M', verify: 'crc32c' })
    t.is(r.errors, 0)
    t.true(r.readIos > 0)
  } finally {
    await dev.stop()
  }
})

test.serial('batch hooks: every write is marked before it runs, one prologue per batch, the epilogue after all complete', async (t) => {
  const ram = ramdiskTarget()
  const marked = new Set<Io>()
  const completed = new Set<Io>()
  let prologues = 0
  let writes = 0
  let epilogueIos = 0
  const violations: string[] = []
  const target: Target = {
    ...ram,
    async beforeWrites(ios) {
      prologues++
      for (const io of ios) marked.add(io)
      await new Promise((r) => setTimeout(r, 1)) // the "flush of the marks"
    },
    async write(io) {
      writes++
      if (!marked.has(io)) violations.push(`write at ${io.offset} ran unmarked`)
      await ram.write!(io)
      completed.add(io)
    },
    afterWrites(ios) {
      epilogueIos += ios.length
      for (const io of ios) {
        if (!completed.has(io)) violations.push(`epilogue before write at ${io.offset} completed`)
        marked.delete(io)
      }
    },
  }
  const dev = await createDevice({ target: withIoDelay(target, 3), size: 32 * MiB, queues: 2, depth: 64 })
  try {
    const r = await fio(dev.path, { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M', verify: 'crc32c' })
    t.is(r.errors, 0)
  } finally {
    await dev.stop()
  }
  t.log(`${writes} writes, ${prologues} prologues (${(writes / prologues).toFixed(1)} writes per flush of marks)`)
  t.deepEqual(violations, [])
  t.true(writes >= 2048, 'fio wrote 8 MiB in 4 KiB writes')
  t.true(prologues < writes / 2, 'marks were flushed once per batch, not per write')
  t.is(epilogueIos, writes, 'every write was seen by exactly one epilogue')
  t.is(marked.size, 0, 'every mark was cleared')
})

test.serial('backend requests outside the IO are refused with EINVAL; the device goes on', async (t) => {
  const file = scratchFile('range', 8 * MiB)
  let backing: BackingFile | undefined
  const seen: string[] = []
  const target: Target = {
    async open(ctx) {
      backing = await ctx.openFile(file)
    },
    async read(io) {
      for (const [bufOffset, length] of [[io.length, 512], [0, io.length + 512], [4096 * 1024, 4096]] as const) {
        try {
          await io.readFrom(backing!, 0, bufOffset, length)
          seen.push('ok')
        } catch (err) {
          seen.push((err as { code: string }).code)
        }
      }
      await io.readFrom(backing!, io.offset)
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB })
  try {
    seen.length = 0
    t.is((await ddRead(dev.path, MiB)).code, 0, 'the IO itself still completes')
    t.deepEqual(seen.slice(0, 3), ['EINVAL', 'EINVAL', 'EINVAL'])
  } finally {
    await dev.stop()
    unlinkSync(file)
  }
})
