// The TypeScript RAID1 on a real kernel: data verifies through the mirror,
// members end up identical, a crash resyncs only what the bitmap marks, a
// failing member degrades the array without an error reaching the writer,
// bad members are refused without anything being overwritten, and a member
// served over NBD dies and comes back.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

import test from 'ava'

import { assembleRaid1, createRaid1, deleteDevice } from '../../lib/index.ts'

import { fixture } from '../helpers/child.ts'
import { rejectsWithCode } from '../helpers/errors.ts'
import { scratchFile } from '../helpers/files.ts'
import { fio } from '../helpers/fio.ts'
import { deviceGone, inFlight, requireUblk } from '../helpers/kernel.ts'
import { until } from '../helpers/poll.ts'
import { bitsSetOnDisk, DATA_OFFSET, digestRange } from '../helpers/raid1.ts'
import { sh } from '../helpers/shell.ts'

const MiB = 1 << 20
/** Members of 40 MiB hold a 39 MiB array (1 MiB of metadata). */
const MEMBER = 40 * MiB
const ARRAY = 39 * MiB
const CHUNK = 64 * 1024

test.before(() => requireUblk())


function members(name: string, n = 2): string[] {
  return Array.from({ length: n }, (_, i) => scratchFile(`raid1-${name}-${i}`, MEMBER))
}

/** One fio job per CPU, each on its own part of the array: blk-mq sends each CPU's IO to its own queue. */
const perCpu = (spacing: string) => ({ numjobs: 2, extra: ['--cpus_allowed=0-1', '--cpus_allowed_policy=split', `--offset_increment=${spacing}`] })

function identical(t: { is(a: unknown, b: unknown, m?: string): void }, a: string, b: string): void {
  t.is(digestRange(a, DATA_OFFSET, ARRAY), digestRange(b, DATA_OFFSET, ARRAY), `${a} and ${b} hold the same data`)
}

test.serial('fio crc32c verify through the mirror on 2 queues, the second in a worker, and while a new member is rebuilt; members identical after stop', async (t) => {
  const [a, b, c] = members('verify', 3)
  const md = await createRaid1({ members: [a!, b!], chunkSize: '64k', depth: 64, queues: 2 })
  try {
    t.is(md.status().state, 'optimal')
    t.is(md.status().queueWorkers, 1, 'queue 1 is served by a worker')
    for (const job of [
      { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M' },
      { rw: 'write', bs: '1M', iodepth: 4, size: '16M' },
      { rw: 'randwrite', bs: '512', iodepth: 8, size: '1M' },
    ] as const) {
      const r = await fio(md.path, { ...job, verify: 'crc32c', ...perCpu('16M') })
      t.is(r.errors, 0, `${job.rw} ${job.bs}`)
      t.true(r.writeIos > 0 && r.readIos > 0)
    }
    const perQueue = md.device.stats().queues.map((q) => q.write.ios)
    t.true(perQueue.every((n) => n > 0), `both queues served writes: ${perQueue.join(', ')}`)
    t.true(md.status().bitmapFlushes > 0, 'writes set bits on disk')
    // Writes to chunks whose bits were on disk went member to member on
    // the queue thread, past JavaScript (the gated write route).
    const routedWrites = md.device.stats().dispatch?.routedWrites ?? 0
    t.true(routedWrites > 0, `routed writes: ${routedWrites}`)
    t.log(`writes routed past JavaScript: ${routedWrites}`)

    // A new member takes slot 1 while both queues write: the worker opens
    // its file before it writes again, so writes to chunks the rebuild has
    // already copied reach it too.
    await md.failMember(1)
    await md.addMember(c!)
    const during = await fio(md.path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '4M', verify: 'crc32c', ...perCpu('16M') })
    t.is(during.errors, 0, 'writes during the rebuild')
    await md.whenResynced()
    t.like(md.status().lastResync, { kind: 'full' })
    t.is(md.status().state, 'optimal')
  } finally {
    await md.stop()
  }
  t.true(deviceGone(md.id))
  identical(t, a!, c!)
  t.is(bitsSetOnDisk(a!, 4096), 0, 'a clean stop clears the bitmap')
  for (const f of [a!, b!, c!]) unlinkSync(f)
})

test.serial('sequential writes: the chunks ahead of the writer are marked with its own, so 16 MiB of 1 MiB writes take a few bitmap flushes, not one per write; data and members match', async (t) => {
  const [a, b] = members('sequential')
  const data = scratchFile('raid1-sequential-data', 16 * MiB)
  writeFileSync(data, randomBytes(16 * MiB))
  const md = await createRaid1({ members: [a!, b!], chunkSize: '64k', depth: 64 })
  try {
    const before = md.status().bitmapFlushes
    // One 1 MiB write at a time, 16 chunks each: without marking ahead,
    // each write waits for a flush of its own 16 bits.
    const dd = await sh('dd', [`if=${data}`, `of=${md.path}`, 'bs=1M', 'count=16', 'oflag=direct', 'conv=nocreat', 'status=none'])
    t.is(dd.code, 0, dd.stderr)
    const flushes = md.status().bitmapFlushes - before
    t.true(flushes >= 1 && flushes <= 8, `bitmap flushes for 16 sequential writes: ${flushes}`)
    t.log(`bitmap flushes for 16 sequential 1 MiB writes over 64 KiB chunks: ${flushes}`)
    t.true((md.device.stats().dispatch?.routedWrites ?? 0) > 0, 'writes into chunks marked ahead went past JavaScript')
    t.is(digestRange(md.path, 0, 16 * MiB), digestRange(data, 0, 16 * MiB), 'the device reads back what was written')
  } finally {
    await md.stop()
  }
  identical(t, a!, b!)
  for (const f of [a!, b!, data]) unlinkSync(f)
})

test.serial("offloadWrites: the copies run on io_uring's worker threads; fio crc32c verify, members identical", async (t) => {
  const [a, b] = members('offload')
  const md = await createRaid1({ members: [a!, b!], chunkSize: '64k', depth: 64, offloadWrites: true })
  try {
    t.true(md.status().offloadWrites)
    for (const job of [
      { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M' },
      { rw: 'write', bs: '1M', iodepth: 4, size: '16M' },
    ] as const) {
      const r = await fio(md.path, { ...job, verify: 'crc32c' })
      t.is(r.errors, 0, `${job.rw} ${job.bs}`)
      t.true(r.writeIos > 0 && r.readIos > 0)
    }
    const routedWrites = md.device.stats().dispatch?.routedWrites ?? 0
    t.true(routedWrites > 0, `offloaded writes are routed writes: ${routedWrites}`)
  } finally {
    await md.stop()
  }
  identical(t, a!, b!)
  const before = digestRange(a!, 0, MEMBER)
  await rejectsWithCode(t, createRaid1({ members: [a!, b!], force: true, offloadWrites: 'yes' as unknown as boolean }), 'EINVAL', /offloadWrites must be true or false/)
  t.is(digestRange(a!, 0, MEMBER), before, 'refused before a member was touched')
  for (const f of [a!, b!]) unlinkSync(f)
})

test.serial('kill -9 during random writes: only dirty chunks are resynced, earlier data verifies', async (t) => {
  const [a, b] = members('crash')
  const options = { members: [a, b], chunkSize: CHUNK, bitmapClearDelayMs: 300, queues: 2 }
  const child = spawn(process.execPath, [fixture('raid1-serve.ts'), JSON.stringify(options)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)))
  })
  const { id, path } = JSON.parse(line) as { id: number; path: string }

  // Known data in the first 8 MiB, then idle long enough for its bits to clear.
  const pattern = join('/tmp', `ublk-raid1-pattern-${process.pid}`)
  writeFileSync(pattern, randomBytes(8 * MiB))
  const dd = await sh('dd', [`if=${pattern}`, `of=${path}`, 'bs=1M', 'oflag=direct', 'conv=nocreat,fsync'])
  t.is(dd.code, 0, dd.stderr)
  await until(() => bitsSetOnDisk(a!, 4096) === 0, 'the bits of the idle region are cleared on disk')

  // Random writes to [16 MiB, 32 MiB) from both CPUs, so both queues, until the server dies.
  const both = perCpu('8M')
  const writer = fio(path, { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M', runtime: 30, ...both, extra: [...both.extra, '--offset=16M'] }).catch(
    () => undefined,
  )
  await until(() => bitsSetOnDisk(a!, 4096) > 0, 'writes in flight have marked their chunks on disk')
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('exit', resolve))
  await writer
  await deleteDevice(id)

  const dirty = bitsSetOnDisk(a!, 4096)
  const region = (16 * MiB) / CHUNK
  t.true(dirty > 0, 'writes in flight left bits set')
  t.true(dirty <= region, `${dirty} dirty chunks, all within the 16 MiB written (${region} chunks)`)

  const md = await assembleRaid1({ members: [a!, b!], queues: 2 })
  try {
    await md.whenResynced()
    const last = md.status().lastResync
    t.is(last?.kind, 'dirty')
    t.is(last?.total, dirty, 'the resync took exactly the chunks marked on disk')
    t.is(last?.done, dirty)
    t.is(last?.bytesCopied, dirty * CHUNK)
    t.true(dirty < ARRAY / CHUNK, 'far fewer than the whole array')
    const read = await sh('sh', ['-c', `dd if=${path} bs=1M count=8 iflag=direct status=none | md5sum`])
    const expected = await sh('md5sum', [pattern])
    t.is(read.stdout.split(' ')[0], expected.stdout.split(' ')[0], 'data written before the crash reads back')
  } finally {
    await md.stop()
  }
  identical(t, a!, b!)
  for (const f of [a!, b!, pattern]) unlinkSync(f)
})

/** A member behind device-mapper, whose table can be switched to fail every IO. */
async function flakyMember(
  file: string,
): Promise<{ dev: string; fail(): Promise<void>; failReads(): Promise<void>; heal(): Promise<void>; remove(): Promise<void> }> {
  const loop = (await sh('losetup', ['-f', '--show', '--direct-io=on', file])).stdout.trim()
  const name = `ublk-flaky-${process.pid}`
  const sectors = MEMBER / 512
  const swap = async (table: string) => {
    for (const args of [['suspend', '--noudevsync', name], ['load', name, '--table', table], ['resume', '--noudevsync', name]]) {
      const r = await sh('dmsetup', args)
      if (r.code !== 0) throw new Error(`dmsetup ${args.join(' ')}: ${r.stderr}`)
    }
  }
  // No udev in the test VM: dmsetup makes the node itself.
  const created = await sh('dmsetup', ['create', '--noudevsync', name, '--table', `0 ${sectors} linear ${loop} 0`])
  if (created.code !== 0) throw new Error(`dmsetup create: ${created.stderr}`)
  await sh('dmsetup', ['mknodes', name])
  return {
    dev: `/dev/mapper/${name}`,
    fail: () => swap(`0 ${sectors} error`),
    // dm-flakey, down for an hour from now: reads fail, writes go through.
    failReads: () => swap(`0 ${sectors} flakey ${loop} 0 0 3600 1 error_reads`),
    heal: () => swap(`0 ${sectors} linear ${loop} 0`),
    async remove() {
      await sh('dmsetup', ['remove', '--noudevsync', name])
      await sh('losetup', ['-d', loop])
    },
  }
}

test.serial('a member failing under IO: no error reaches fio, degraded, re-add resyncs incrementally; the array emits each change', async (t) => {
  const [a, b] = members('flaky')
  const flaky = await flakyMember(b!)
  try {
    // Both members are zeroes already (a is zeroed on create, b is a new sparse file).
    const md = await createRaid1({ members: [a!, flaky.dev], chunkSize: CHUNK, assumeClean: true, bitmapClearDelayMs: 200, queues: 2 })
    t.is(md.status().queueWorkers, 1)
    const events: string[] = []
    md.on('state', (state) => events.push(`state ${state}`))
    md.on('member', (e) => events.push(`member ${e.slot} ${e.state}`))
    md.on('resync', (e) => events.push(`resync ${e.kind} ${e.phase}`))
    try {
      // From both CPUs: the member fails under the worker's writes too.
      const writes = fio(md.path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '8M', verify: 'crc32c', ...perCpu('16M') })
      await until(() => md.status().dirtyChunks > 0, 'writes are going on')
      await flaky.fail()
      const r = await writes
      t.is(r.errors, 0, 'the writer saw no error')
      const st = md.status()
      t.is(st.state, 'degraded')
      t.is(st.members[1]?.state, 'faulty')
      t.true(st.members[1]!.writeErrors > 0)
      const sweeps = md.status().bitmapSweeps
      await until(() => md.status().bitmapSweeps >= sweeps + 3, 'the bit cleaner has run three times since')
      const dirty = md.status().dirtyChunks
      t.true(dirty > 0, 'bits are kept while degraded')

      await flaky.heal()
      await md.addMember(flaky.dev)
      await md.whenResynced()
      const last = md.status().lastResync
      t.is(last?.kind, 'recovery')
      t.is(last?.total, dirty, 'only the chunks marked while degraded were copied')
      t.true(dirty <= (24 * MiB) / CHUNK)
      t.is(md.status().state, 'optimal')
      // Events come on the next turn of the event loop.
      await until(() => events.length >= 8, 'the array emitted the resync end')
      t.deepEqual(events, [
        'member 1 faulty',
        'state degraded',
        'member 1 recovering',
        'resync recovery started',
        'state recovering',
        'member 1 active',
        'state optimal',
        'resync recovery done',
      ])
      const again = await fio(md.path, { rw: 'read', bs: '64k', iodepth: 4, size: '8M', ...perCpu('16M') })
      t.is(again.errors, 0)
    } finally {
      await md.stop()
    }
  } finally {
    await flaky.remove()
  }
  identical(t, a!, b!)
  for (const f of [a!, b!]) unlinkSync(f)
})

test.serial('read errors on a member are served from the other and repaired; the member stays in sync', async (t) => {
  const [a, b] = members('badreads')
  const flaky = await flakyMember(b!)
  const pattern = join('/tmp', `ublk-raid1-reads-${process.pid}`)
  writeFileSync(pattern, randomBytes(16 * MiB))
  try {
    const md = await createRaid1({ members: [a!, flaky.dev], chunkSize: CHUNK, assumeClean: true, queues: 2 })
    try {
      const dd = await sh('dd', [`if=${pattern}`, `of=${md.path}`, 'bs=1M', 'oflag=direct', 'conv=nocreat,fsync'])
      t.is(dd.code, 0, dd.stderr)
      const routedBefore = md.device.stats().dispatch!.routedReads
      await flaky.failReads()
      // From each CPU in turn, so each queue: queue 1's worker serves its
      // failed reads from the other member and asks the mirror for the repairs.
      const expected = await sh('md5sum', [pattern])
      for (const cpu of [0, 1]) {
        const read = await sh('sh', ['-c', `taskset -c ${cpu} dd if=${md.path} bs=64k count=256 iflag=direct status=none | md5sum`])
        t.is(read.stdout.split(' ')[0], expected.stdout.split(' ')[0], `every read from CPU ${cpu} returned the data written`)
      }
      const st = md.status()
      t.is(st.state, 'optimal', 'a read error alone does not fail a member')
      // Half of each pass's 256 reads are routed to the failing member (1 MiB regions alternate).
      t.true(st.members[1]!.readErrors >= 256, `reads routed to the failing member failed there, from both queues: ${st.members[1]!.readErrors}`)
      t.is(st.members[1]!.repairedReads, st.members[1]!.readErrors, 'each failed read was rewritten on the member')
      t.true(md.device.stats().dispatch!.routedReads - routedBefore >= 256, 'reads were served without JavaScript')
      const reads = md.device.stats().queues.map((q) => q.read.ios)
      t.true(reads.every((n) => n >= 256), `both queues served reads: ${reads.join(', ')}`)
      await flaky.heal()
    } finally {
      await md.stop()
    }
  } finally {
    await flaky.remove()
  }
  identical(t, a!, b!)
  for (const f of [a!, b!, pattern]) unlinkSync(f)
})

test.serial('foreign, damaged and too small members are refused and nothing is overwritten', async (t) => {
  const [a, b, c, d] = members('refuse', 4)
  for (const pair of [[a!, b!], [c!, d!]]) await (await createRaid1({ members: pair })).stop()
  const blank = scratchFile('raid1-refuse-blank', MEMBER)
  const small = scratchFile('raid1-refuse-small', 2 * MiB)
  const all = [a!, b!, c!, d!, blank, small]
  const before = all.map((f) => digestRange(f, 0, MEMBER))

  await rejectsWithCode(t, assembleRaid1({ members: [a!, c!] }), 'EINVAL', /not one array/)
  await rejectsWithCode(t, createRaid1({ members: [a!, blank] }), 'EEXIST', /already belongs/)
  await rejectsWithCode(t, assembleRaid1({ members: [a!, blank] }), 'EINVAL', /not a RAID1 member/)
  await rejectsWithCode(t, createRaid1({ members: [blank, small], size: 8 * MiB }), 'ENOSPC', /holds/)
  await rejectsWithCode(t, createRaid1({ members: [blank, blank] }), 'EINVAL', /twice/)
  await rejectsWithCode(t, createRaid1({ members: [blank, small], chunkSize: '3k' }), 'EINVAL', /power of two/)
  t.deepEqual(
    all.map((f) => digestRange(f, 0, MEMBER)),
    before,
    'no member was written',
  )

  // One damaged byte in c's superblock.
  const bytes = readFileSync(c!)
  bytes[100] = bytes[100]! ^ 0xff
  writeFileSync(c!, bytes)
  const damaged = digestRange(c!, 0, MEMBER)
  await rejectsWithCode(t, assembleRaid1({ members: [c!, d!] }), 'EBADMSG', /damaged/)
  t.is(digestRange(c!, 0, MEMBER), damaged)
  t.is(digestRange(d!, 0, MEMBER), before[3]!)

  // The undamaged member alone still assembles, degraded.
  const md = await assembleRaid1({ members: [d!] })
  t.is(md.status().state, 'degraded')
  await md.stop()
  for (const f of all) unlinkSync(f)
})

// --- A member across the network -----------------------------------------------
// One member is /dev/nbdN, the kernel's NBD client, connected over loopback
// TCP to nbdkit serving a file. The NBD server dies under fio: the member
// is marked faulty and fio sees no error; it comes back and is re-added:
// an incremental resync, and the members end identical.

const hasNbd = existsSync('/sys/module/nbd') && spawnSync('sh', ['-c', 'command -v nbdkit && command -v nbd-client']).status === 0

/** nbdkit serving `file` on 127.0.0.1:`port`, in the foreground. */
function nbdkit(file: string, port: number): ChildProcess {
  return spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', file], { stdio: 'ignore' })
}

/**
 * Connects the kernel's NBD client `nbd` to 127.0.0.1:`port`, once the
 * server listens. With a request timeout, as a network member needs: an
 * IO the dead server never answers fails after it, instead of holding
 * the array.
 */
async function connect(nbd: string, port: number): Promise<void> {
  let last = ''
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    const r = await sh('nbd-client', ['127.0.0.1', String(port), nbd, '-b', '4096', '-t', '5'])
    if (r.code === 0) return
    last = r.stderr
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  throw new Error(`nbd-client ${nbd}: ${last}`)
}

;(hasNbd ? test.serial : test.serial.skip)(
  'RAID1 with an NBD member: its server killed under fio, no error reaches fio; back and re-added, an incremental resync, members identical',
  async (t) => {
    // The VM's loopback interface starts down.
    await sh('ip', ['link', 'set', 'lo', 'up'])
    const [local, remote] = [0, 1].map((i) => scratchFile(`nbd-member-${i}`, 40 * MiB))
    // Below Linux's ephemeral range (32768 and up), where the client's own
    // connections and sockets in TIME_WAIT could hold them.
    const port1 = 10000 + 2 * (process.pid % 10000)
    const port2 = port1 + 1
    let server = nbdkit(remote!, port1)
    await connect('/dev/nbd0', port1)
    // Both members are fresh zeroed files: the same data, no initial sync.
    const md = await createRaid1({ members: [local!, '/dev/nbd0'], chunkSize: '64k', assumeClean: true, bitmapClearDelayMs: 500 })
    try {
      const fio = sh('fio', ['--name=nbd', `--filename=${md.path}`, '--ioengine=io_uring', '--direct=1', '--rw=randwrite', '--bs=4k',
        '--iodepth=16', '--rate_iops=600', '--size=12M', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1'], 300_000)
      await until(() => inFlight(md.path) > 0, 'fio has IO in flight', 60_000)
      server.kill('SIGKILL')
      await until(() => md.status().members[1]?.state === 'faulty', 'the NBD member is marked faulty', 60_000)
      t.is(md.status().state, 'degraded')
      // The member comes back: a new server for the same file, a new NBD
      // device (the array still holds the old one open), re-added.
      server = nbdkit(remote!, port2)
      await connect('/dev/nbd1', port2)
      await md.addMember('/dev/nbd1')
      await md.whenResynced()
      const resync = md.status().lastResync!
      t.is(resync.kind, 'recovery', 'the member that left resyncs only what changed')
      t.true(resync.total < md.status().chunks, `${resync.total} of ${md.status().chunks} chunks copied`)
      t.log(`re-added over NBD: ${resync.total} of ${md.status().chunks} chunks resynced`)
      const r = await fio
      t.is(r.code, 0, `fio saw an error: ${r.stdout}\n${r.stderr}`)
      t.is(md.status().state, 'optimal')
    } finally {
      await md.stop().finally(async () => {
        await sh('nbd-client', ['-d', '/dev/nbd0'])
        await sh('nbd-client', ['-d', '/dev/nbd1'])
        server.kill('SIGTERM')
      })
    }
    const dataOffset = md.status().dataOffset
    const size = md.status().size
    const chunk = 64 * 1024
    const differing: number[] = []
    for (let c = 0; c * chunk < size; c++) {
      if (digestRange(local!, dataOffset + c * chunk, chunk) !== digestRange(remote!, dataOffset + c * chunk, chunk)) differing.push(c)
    }
    t.deepEqual(differing, [], 'the members are identical (these 64 KiB chunks differ)')
    for (const f of [local!, remote!]) unlinkSync(f)
  },
)
