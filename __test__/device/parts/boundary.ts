// What a TypeScript target sends across to the native side is checked
// request by request: a bad number fails that request (and a bad
// passthrough its IO) at once with its errno, never the requests beside
// it, and a file or buffer of another device, or a made-up one, is EBADF.
import { unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../../../lib/index.ts'
import type { BackingFile, Io, StagingBuffer, Target, TargetContext } from '../../../lib/index.ts'

import { scratchFile } from '../../helpers/files.ts'
import { requireUblk } from '../../helpers/kernel.ts'
import { ddRead, sh } from '../../helpers/shell.ts'

const MiB = 1 << 20

test.before(() => requireUblk())

/** The code an operation fails with, or 'ok'. */
async function outcome(op: () => Promise<unknown> | unknown): Promise<string> {
  try {
    await op()
    return 'ok'
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

/** A loop target over `path` that hands the IO at `probeAt` to `probe` instead. */
function probing(path: string, probeAt: number, probe: (io: Io, file: BackingFile, ctx: TargetContext) => Promise<void> | void): Target {
  let file: BackingFile
  let context: TargetContext
  return {
    async open(ctx) {
      context = ctx
      file = await ctx.openFile(path)
    },
    read(io) {
      if (io.offset === probeAt) return probe(io, file, context)
      io.passthrough(file, io.offset)
    },
    write(io) {
      io.passthrough(file, io.offset)
    },
  }
}

test.serial('a passthrough with a bad file offset fails its own IO at once with EINVAL, and nothing else', async (t) => {
  const path = scratchFile('bad-passthrough', 8 * MiB)
  const badOffsets = [-4096, 2 ** 53, Number.NaN]
  let probes = 0
  let besideIt = 'not run'
  const target = probing(path, 4 * MiB, async (io, file) => {
    const bad = badOffsets[probes++ % badOffsets.length]!
    // Posted in the same tick as the bad passthrough: must not share its fate.
    const beside = io.readFrom(file, 0, 0, 4096)
    io.passthrough(file, bad)
    besideIt = await outcome(() => beside)
  })
  // No timeout: an IO left unanswered would hang its reader for good.
  const dev = await createDevice({ target, size: 8 * MiB, ioTimeoutMs: 0 })
  try {
    for (const bad of badOffsets) {
      const started = Date.now()
      const r = await sh('dd', [`if=${dev.path}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${MiB / 1024}`, 'iflag=direct'], 30_000)
      t.not(r.code, 0, `offset ${bad}: the read fails`)
      t.regex(r.stderr, /Invalid argument/, `offset ${bad}: with EINVAL`)
      t.true(Date.now() - started < 20_000, `offset ${bad}: at once, not after a timeout`)
    }
    t.is(probes, badOffsets.length)
    t.is(besideIt, 'ok', 'the request posted beside the bad one ran')
    t.is((await ddRead(dev.path, 0)).code, 0, 'the device goes on serving')
  } finally {
    await dev.stop()
    unlinkSync(path)
  }
})

test.serial('bad numbers in backend requests reject their own promise with EINVAL', async (t) => {
  const path = scratchFile('bad-requests', 8 * MiB)
  const codes: Record<string, string> = {}
  const target = probing(path, 4 * MiB, async (io, file, ctx) => {
    const staging = ctx.allocBuffer(4096)
    const checks: Array<[string, () => Promise<unknown>]> = [
      ['buffer range past the IO', () => io.readFrom(file, 0, 4096, 4096)],
      ['negative file offset', () => io.readFrom(file, -512)],
      ['fractional length', () => io.readFrom(file, 0, 0, 100.5)],
      ['staging range past the buffer', () => ctx.read(file, staging, 0, { bufOffset: 2048, length: 4096 })],
      ['sleep of two minutes', () => io.sleep(120_000)],
      ['fallocate collapse range', () => io.fallocate(file, 0x08, 0, 4096)],
      ['fallocate insert range', () => io.fallocate(file, 0x20, 0, 4096)],
      ['fallocate unshare', () => io.fallocate(file, 0x40, 0, 4096)],
      ['fallocate punch hole without keep size', () => io.fallocate(file, FALLOC_FL_PUNCH_HOLE, 0, 4096)],
      ['fallocate punch hole', () => io.fallocate(file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 6 * MiB, 4096)],
      ['a good read', () => io.readFrom(file, 0)],
    ]
    const results = await Promise.all(checks.map(([, op]) => outcome(op)))
    checks.forEach(([name], i) => (codes[name] = results[i]!))
    staging.free()
  })
  const dev = await createDevice({ target, size: 8 * MiB })
  try {
    t.is((await ddRead(dev.path, 4 * MiB)).code, 0, 'the probing IO itself succeeds')
    t.deepEqual(codes, {
      'buffer range past the IO': 'EINVAL',
      'negative file offset': 'EINVAL',
      'fractional length': 'EINVAL',
      'staging range past the buffer': 'EINVAL',
      'sleep of two minutes': 'EINVAL',
      'fallocate collapse range': 'EINVAL',
      'fallocate insert range': 'EINVAL',
      'fallocate unshare': 'EINVAL',
      'fallocate punch hole without keep size': 'EINVAL',
      'fallocate punch hole': 'ok',
      'a good read': 'ok',
    })
  } finally {
    await dev.stop()
    unlinkSync(path)
  }
})

test.serial("a file or staging buffer of another device, or a made-up one, is refused with EBADF", async (t) => {
  const pathA = scratchFile('handles-a', 8 * MiB)
  const pathB = scratchFile('handles-b', 8 * MiB)
  let fileOfA: BackingFile | undefined
  let bufferOfA: StagingBuffer | undefined
  const a = probing(pathA, -1, () => {})
  const openA = a.open!.bind(a)
  a.open = async (ctx) => {
    await openA(ctx)
    fileOfA = await ctx.openFile(pathA)
    bufferOfA = ctx.allocBuffer(4096)
  }
  const codes: Record<string, string> = {}
  const b = probing(pathB, 4 * MiB, async (io, file, ctx) => {
    const forged = { ...file } as BackingFile
    const checks: Array<[string, () => unknown]> = [
      ["another device's file", () => io.readFrom(fileOfA!, 0)],
      ["another device's file in a passthrough", () => io.passthrough(fileOfA!, 0)],
      ["another device's file in a read route", () => ctx.routeReads({ files: [fileOfA!] })],
      ["another device's staging buffer", () => ctx.write(file, bufferOfA!, 0)],
      ['a copy of a file object', () => io.readFrom(forged, 0)],
      ['a made-up file', () => io.fsync({ path: pathB, size: 8 * MiB, direct: true, readOnly: false, blockDevice: false })],
      ['not a file at all', () => io.fdatasync(null as unknown as BackingFile)],
    ]
    for (const [name, op] of checks) codes[name] = await outcome(op)
    io.passthrough(file, io.offset)
  })
  const devA = await createDevice({ target: a, size: 8 * MiB })
  const devB = await createDevice({ target: b, size: 8 * MiB })
  try {
    t.is((await ddRead(devB.path, 4 * MiB)).code, 0)
    t.deepEqual(codes, {
      "another device's file": 'EBADF',
      "another device's file in a passthrough": 'EBADF',
      "another device's file in a read route": 'EBADF',
      "another device's staging buffer": 'EBADF',
      'a copy of a file object': 'EBADF',
      'a made-up file': 'EBADF',
      'not a file at all': 'EBADF',
    })
    t.is((await ddRead(devA.path, 0)).code, 0, 'device A is untouched')
  } finally {
    await devB.stop()
    await devA.stop()
    unlinkSync(pathA)
    unlinkSync(pathB)
  }
})
