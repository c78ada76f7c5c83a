// Runs fio against every system side by side, in one kernel, and prints
// IOPS and the ratios the project's bars are set in. Absolute figures from
// a VM without KVM are small and noisy; the ratios are the signal.
//
//   node --import tsx bench/run.ts [--quick] [--runtime S] [--rublk PATH] [--out FILE]
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { release } from 'node:os'
import { promisify } from 'node:util'

import { parseArgs } from 'node:util'

import {
  DEPTH,
  kernelLoop,
  kernelNull,
  nullBlk,
  rublk,
  rustLoop,
  rustNull,
  tsLoop,
  tsNull,
  tsNullNoQueueThread,
  tsNullQueueThreads,
  type Prepared,
  type System,
} from './systems.ts'
import { fioRun, mdRaid1, RAID1_CHUNK, RAID1_WORKLOADS, TS_RAID1_OFFLOADED, tsRaid1, writeWhole } from './raid1.ts'
import { runBatchIo, type BatchPoint } from './batch-io.ts'
import { median, medianRatio, runPaired, type PairedRatio } from './paired.ts'
import { runZeroCopy, ZC_RATIO_WORKLOAD, ZC_WORKLOADS, zeroCopySystems, type ZcPoint } from './zero-copy.ts'

const run = promisify(execFile)
const MiB = 1 << 20

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    runtime: { type: 'string', default: '3' },
    rublk: { type: 'string' },
    out: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
})

interface Point {
  system: string
  rw: 'randread' | 'randwrite'
  qd: number
  queues: number
  iops: number
}

async function fioIops(path: string, rw: 'randread' | 'randwrite', qd: number, jobs: number, runtime: number): Promise<number> {
  return (await fioRun(path, { rw, bs: '4k', qd }, 256 * MiB, runtime, jobs)).iops
}

/**
 * A file system that honours O_DIRECT (tmpfs does not), on a RAM-backed
 * null_blk; its inode tables and journal are written by mkfs, not by a
 * kernel thread that would take CPU from the first systems measured.
 */
async function loopBackingFile(size: number): Promise<{ file: string; mnt: string; teardown(): Promise<void> }> {
  const store = await nullBlk('nbstore', 1, 1024, true)
  await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', store.path])
  const mnt = mkdtempSync('/tmp/bench-fs-')
  await run('mount', [store.path, mnt])
  const file = `${mnt}/backing.img`
  await run('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${size / MiB}`, 'oflag=direct', 'status=none'])
  return {
    file,
    mnt,
    async teardown() {
      await run('umount', [mnt])
      await store.teardown()
    },
  }
}

const RUST_LOOP_ONE_FILE = 'Rust loop (one file)'

function fmt(iops: number | undefined): string {
  return iops === undefined ? '-' : `${(iops / 1000).toFixed(1)}k`
}

async function main(): Promise<void> {
  const runtime = Number(opts.runtime)
  const raid1Rounds = opts.quick ? 1 : 3
  const pairedRounds = opts.quick ? 1 : 3
  const qds = opts.quick ? [32] : [1, 32, 128]
  const queueCounts = opts.quick ? [1] : [1, 2]
  const loopSize = 256 * MiB
  const backing = await loopBackingFile(loopSize)
  const rustLoopOfFile = rustLoop(backing.file, loopSize)
  const tsLoopOfFile = tsLoop(backing.file, loopSize)
  const systems: System[] = [kernelNull, rustNull, tsNull, tsNullNoQueueThread, tsNullQueueThreads, kernelLoop(backing.file), rustLoopOfFile, tsLoopOfFile]
  if (opts.rublk && existsSync(opts.rublk)) {
    systems.push(rublk(opts.rublk, 'null', 900), rublk(opts.rublk, 'loop', 901, ['-f', backing.file]))
  } else {
    console.log('rublk not installed: its columns are left out')
  }

  const points: Point[] = []
  const failures: string[] = []
  /** Per system and workload: the medians over the rounds, and each round's bytes per second. */
  const raid1: Array<{ system: string; workload: string; iops: number; bw: number; rounds: number[] }> = []
  const raid1Runs: Array<{ system: string; workload: string; round: number; iops: number; bw: number }> = []
  let zeroCopy: { points: ZcPoint[]; ratios: Record<string, number | null> } = { points: [], ratios: {} }
  let batchIo: { points: BatchPoint[]; ratios: Record<string, number | null> } | undefined
  let paired: PairedRatio[] | undefined
  try {
    // RAID1 first: md and ours over the same two files, one workload at a time.
    const raidSize = 128 * MiB
    const members: [string, string] = [`${backing.mnt}/member-a.img`, `${backing.mnt}/member-b.img`]
    // The Rust loop target over one file of the same file system: what a
    // mirror's writes are measured against (a mirror writes twice as much).
    const single = `${backing.mnt}/single.img`
    for (const m of [...members, single]) await run('truncate', ['-s', String(raidSize + 4 * MiB), m])
    // Rounds of every contender back to back: this test bed's speed drifts
    // by a third within minutes, so each ratio is the median of the
    // rounds' ratios, each taken between runs a few seconds apart.
    for (let round = 0; round < raid1Rounds; round++) {
      for (const w of RAID1_WORKLOADS) {
        const contenders = [mdRaid1(members), tsRaid1(members, raidSize, true)]
        if (w.rw === 'randwrite') contenders.push(tsRaid1(members, raidSize, false))
        // For writes: the copies on io_uring's worker threads (offloadWrites)
        // beside the default, and the Rust loop over one file.
        if (w.rw !== 'randread') contenders.push(tsRaid1(members, raidSize, true, true), { ...rustLoop(single, raidSize), name: RUST_LOOP_ONE_FILE })
        for (const system of contenders) {
          let dev: Prepared | undefined
          try {
            dev = await system.prepare(1)
            await writeWhole(dev.path, raidSize)
            const r = await fioRun(dev.path, w, raidSize, runtime)
            raid1Runs.push({ system: system.name, workload: w.name, round, ...r })
            process.stderr.write(`  round ${round + 1}: ${system.name.padEnd(28)} ${w.name}: ${fmt(r.iops)} IOPS, ${(r.bw / MiB).toFixed(1)} MiB/s\n`)
          } catch (err) {
            failures.push(`${system.name} ${w.name} round ${round + 1}: ${String(err).split('\n')[0]}`)
          } finally {
            await dev?.teardown()
          }
        }
      }
    }
    for (const w of RAID1_WORKLOADS) {
      for (const system of new Set(raid1Runs.filter((r) => r.workload === w.name).map((r) => r.system))) {
        const runs = raid1Runs.filter((r) => r.workload === w.name && r.system === system)
        raid1.push({ system, workload: w.name, iops: median(runs.map((r) => r.iops)), bw: median(runs.map((r) => r.bw)), rounds: runs.map((r) => r.bw) })
      }
    }

    // Zero copy against the copy path, on the same files.
    const zcWorkloads = opts.quick ? ZC_WORKLOADS.filter((w) => w.name === ZC_RATIO_WORKLOAD) : ZC_WORKLOADS
    const zcSystems = zeroCopySystems(backing.file, members, raidSize)
    zeroCopy = await runZeroCopy(zcSystems, zcWorkloads, raidSize, runtime, (l) => process.stderr.write(`${l}\n`), failures)

    // Batch IO against one command per IO.
    batchIo = await runBatchIo(runtime, (l) => process.stderr.write(`${l}\n`), failures)

    for (const queues of queueCounts) {
      for (const rw of ['randread', 'randwrite'] as const) {
        for (const qd of qds) {
          // One system at a time, each for the same workload back to back.
          for (const system of systems) {
            if (system.queueCounts && !system.queueCounts.includes(queues)) continue
            let dev: Prepared | undefined
            try {
              dev = await system.prepare(queues)
              const iops = await fioIops(dev.path, rw, qd, queues, runtime)
              points.push({ system: system.name, rw, qd, queues, iops })
              process.stderr.write(`  ${system.name.padEnd(18)} ${rw} QD${qd} x${queues}: ${fmt(iops)} IOPS\n`)
            } catch (err) {
              failures.push(`${system.name} ${rw} QD${qd} x${queues}: ${String(err).split('\n')[0]}`)
            } finally {
              await dev?.teardown()
            }
          }
        }
      }
    }

    // The bars' ratios again, in paired rounds (see ./paired.ts).
    paired = await runPaired(
      [
        { key: 'ts_null_vs_rust_null_qd1', a: tsNull, b: rustNull, rw: 'randread', qd: 1, queues: 1 },
        { key: 'ts_null_no_queue_thread_vs_rust_null_qd1', a: tsNullNoQueueThread, b: rustNull, rw: 'randread', qd: 1, queues: 1 },
        { key: 'ts_null_vs_rust_null_2q', a: tsNull, b: rustNull, rw: 'randread', qd: 32, queues: 2 },
        { key: 'ts_loop_vs_rust_loop_randwrite', a: tsLoopOfFile, b: rustLoopOfFile, rw: 'randwrite', qd: 32, queues: 1 },
      ],
      pairedRounds,
      (path, rw, qd, queues) => fioIops(path, rw, qd, queues, runtime),
      (l) => process.stderr.write(`${l}\n`),
      failures,
    )
  } finally {
    await backing.teardown()
  }

  const iops = (system: string, rw: string, qd: number, queues: number): number | undefined =>
    points.find((p) => p.system === system && p.rw === rw && p.qd === qd && p.queues === queues)?.iops
  const ratio = (a: string, b: string, rw = 'randread', qd = 32, queues = 1): number | null => {
    const x = iops(a, rw, qd, queues)
    const y = iops(b, rw, qd, queues)
    return x !== undefined && y ? Number((x / y).toFixed(3)) : null
  }
  const ratios = {
    ts_null_vs_rust_null: ratio('TypeScript null', 'Rust null'),
    ts_loop_vs_kernel_loop: ratio('TypeScript loop', 'kernel loop (dio)'),
    rust_null_vs_rublk_null: ratio('Rust null', 'rublk null'),
    rust_loop_vs_kernel_loop: ratio('Rust loop', 'kernel loop (dio)'),
    ts_loop_vs_rust_loop: ratio('TypeScript loop', 'Rust loop'),
    rust_null_vs_kernel_null: ratio('Rust null', 'kernel null_blk'),
    rust_loop_vs_rublk_loop: ratio('Rust loop', 'rublk loop'),
    ts_null_vs_rust_null_2q: ratio('TypeScript null', 'Rust null', 'randread', 32, 2),
    ts_null_vs_rust_null_qd1: ratio('TypeScript null', 'Rust null', 'randread', 1, 1),
    ts_null_no_queue_thread_vs_rust_null: ratio(tsNullNoQueueThread.name, 'Rust null'),
    ts_null_no_queue_thread_vs_rust_null_qd1: ratio(tsNullNoQueueThread.name, 'Rust null', 'randread', 1, 1),
    ts_null_queue_threads_vs_rust_null_2q: ratio(tsNullQueueThreads.name, 'Rust null', 'randread', 32, 2),
    ts_loop_vs_rust_loop_randwrite: ratio('TypeScript loop', 'Rust loop', 'randwrite', 32, 1),
  }

  /** The median over the rounds of `a`'s bandwidth over `b`'s in the same round. */
  const raidRatio = (a: string, b: string, workload: string): number | null => {
    const bw = (system: string, round: number) => raid1Runs.find((r) => r.system === system && r.workload === workload && r.round === round)?.bw
    const rounds: Array<{ a: number; b: number }> = []
    for (let round = 0; round < raid1Rounds; round++) {
      const x = bw(a, round)
      const y = bw(b, round)
      if (x !== undefined && y) rounds.push({ a: x, b: y })
    }
    return medianRatio(rounds)
  }
  Object.assign(ratios, {
    raid1_randwrite_vs_md: raidRatio('TypeScript RAID1', 'md raid1', '4k randwrite QD32'),
    raid1_randread_vs_md: raidRatio('TypeScript RAID1', 'md raid1', '4k randread QD32'),
    raid1_seqwrite_vs_md: raidRatio('TypeScript RAID1', 'md raid1', '1M seq write QD4'),
    raid1_bitmap_cost: raidRatio('TypeScript RAID1', 'TypeScript RAID1 (no bitmap)', '4k randwrite QD32'),
    raid1_randwrite_vs_rust_loop: raidRatio('TypeScript RAID1', RUST_LOOP_ONE_FILE, '4k randwrite QD32'),
    raid1_seqwrite_vs_rust_loop: raidRatio('TypeScript RAID1', RUST_LOOP_ONE_FILE, '1M seq write QD4'),
    raid1_offload_randwrite_vs_rust_loop: raidRatio(TS_RAID1_OFFLOADED, RUST_LOOP_ONE_FILE, '4k randwrite QD32'),
    raid1_offload_seqwrite_vs_rust_loop: raidRatio(TS_RAID1_OFFLOADED, RUST_LOOP_ONE_FILE, '1M seq write QD4'),
  })

  Object.assign(ratios, zeroCopy.ratios, batchIo?.ratios)
  // The paired rounds' medians stand for their keys; the big table's single points stay in `points`.
  for (const p of paired ?? []) Object.assign(ratios, { [p.key]: p.ratio })

  const names = systems.map((s) => s.name)
  console.log(`\n4 KiB random IO, fio io_uring direct, ${runtime} s per point, kernel ${release()}; IOPS`)
  console.log(['workload'.padEnd(22), ...names.map((n) => n.padStart(18))].join(''))
  for (const queues of queueCounts) {
    for (const rw of ['randread', 'randwrite']) {
      for (const qd of qds) {
        const label = `${rw} QD${qd} x${queues}q`
        console.log([label.padEnd(22), ...names.map((n) => fmt(iops(n, rw, qd, queues)).padStart(18))].join(''))
      }
    }
  }
  console.log(`\nRAID1 over two files on ext4 (md: loop dio members), bitmap chunk ${RAID1_CHUNK}, 1 queue, each device written whole first; median of ${raid1Rounds} rounds, MiB/s (IOPS)`)
  const raidSystems = ['md raid1', 'TypeScript RAID1', 'TypeScript RAID1 (no bitmap)', TS_RAID1_OFFLOADED, RUST_LOOP_ONE_FILE]
  console.log(['workload'.padEnd(22), ...raidSystems.map((n) => n.padStart(30))].join(''))
  for (const w of RAID1_WORKLOADS) {
    const cells = raidSystems.map((n) => {
      const r = raid1.find((x) => x.system === n && x.workload === w.name)
      return (r ? `${(r.bw / MiB).toFixed(1)} (${fmt(r.iops)})` : '-').padStart(30)
    })
    console.log([w.name.padEnd(22), ...cells].join(''))
  }
  console.log(`\nZero copy vs copy, 1 queue, depth ${DEPTH}; MiB/s`)
  const zcSystems = [...new Set(zeroCopy.points.map((p) => p.system))]
  console.log(['workload'.padEnd(22), ...zcSystems.flatMap((n) => [`${n} zc`.padStart(24), `${n} copy`.padStart(24)])].join(''))
  for (const name of [...new Set(zeroCopy.points.map((p) => p.workload))]) {
    const cell = (system: string, zc: boolean) => {
      const p = zeroCopy.points.find((x) => x.system === system && x.workload === name && x.zeroCopy === zc)
      return (p ? (p.bw / MiB).toFixed(1) : '-').padStart(24)
    }
    console.log([name.padEnd(22), ...zcSystems.flatMap((n) => [cell(n, true), cell(n, false)])].join(''))
  }
  console.log(`\nBatch IO vs one command per IO, copy path, 1 queue, depth ${DEPTH}, 4k randread QD32; IOPS`)
  for (const p of batchIo?.points ?? []) console.log(`  ${p.system.padEnd(18)} ${p.batchIo ? 'batch IO' : 'per-IO  '} ${fmt(p.iops)}`)
  console.log(`\nPaired rounds (median of ${pairedRounds} rounds' ratios; IOPS a / b per round):`)
  for (const p of paired ?? []) console.log(`  ${p.key.padEnd(42)} ${p.ratio ?? '-'}   ${p.rounds.map((r) => `${fmt(r.a)}/${fmt(r.b)}`).join(', ')}`)
  console.log('\nratios (4k randread, QD32, 1 queue, unless named; *_zc_vs_copy: 128k randwrite QD8; raid1_* and the paired keys: median of the rounds\' ratios):')
  for (const [k, v] of Object.entries(ratios)) console.log(`  ${k.padEnd(26)} ${v ?? '-'}`)
  for (const f of failures) console.log(`failed: ${f}`)

  const result = { kernel: release(), depth: DEPTH, runtime, points, raid1, paired: paired ?? [], zeroCopy: zeroCopy.points, batchIo: batchIo?.points ?? [], ratios, failures }
  if (opts.out) writeFileSync(opts.out, JSON.stringify(result, null, 2) + '\n')
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
