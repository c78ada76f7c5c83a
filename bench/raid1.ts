// TypeScript RAID1 against md raid1 with an internal bitmap, over the same
// two backing files (md through direct-IO loop devices, ours straight on the
// files), with the same bitmap chunk; and our RAID1 with and without its
// bitmap, for what the bitmap costs.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

import { createRaid1 } from '../lib/index.ts'
import { DEPTH, type Prepared, type System } from './systems.ts'

const run = promisify(execFile)
const MiB = 1 << 20

export const RAID1_CHUNK = '1M'

export interface Raid1Workload {
  name: string
  rw: 'randwrite' | 'randread' | 'write'
  bs: string
  qd: number
}

export const RAID1_WORKLOADS: Raid1Workload[] = [
  { name: '4k randwrite QD32', rw: 'randwrite', bs: '4k', qd: 32 },
  { name: '4k randread QD32', rw: 'randread', bs: '4k', qd: 32 },
  { name: '1M seq write QD4', rw: 'write', bs: '1M', qd: 4 },
]

/** IOPS and bytes per second of one fio run (`jobs` processes, reported as one). */
export async function fioRun(
  path: string,
  w: Pick<Raid1Workload, 'rw' | 'bs' | 'qd'>,
  size: number,
  runtime: number,
  jobs = 1,
): Promise<{ iops: number; bw: number }> {
  const { stdout } = await run(
    'fio',
    [
      '--name=bench',
      `--filename=${path}`,
      '--ioengine=io_uring',
      '--direct=1',
      `--rw=${w.rw}`,
      `--bs=${w.bs}`,
      `--iodepth=${w.qd}`,
      `--numjobs=${jobs}`,
      '--group_reporting',
      `--size=${size}`,
      '--ramp_time=1',
      `--runtime=${runtime}`,
      '--time_based',
      '--output-format=json',
    ],
    { maxBuffer: 16 * MiB },
  )
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0]
  if (job.error) throw new Error(`fio on ${path}: error ${job.error}`)
  const side = w.rw === 'randread' ? job.read : job.write
  return { iops: side.iops, bw: side.bw_bytes }
}

/**
 * Writes the first `size` bytes of `path` once, sequentially, before it is
 * measured: a new RAID1 starts on members cut back to holes (that is how
 * it makes them identical), and the first write to each block of a file
 * then costs the file system an allocation that no later write pays. Every
 * contender is measured with its blocks in place, as a disk image in use
 * has them.
 */
export async function writeWhole(path: string, size: number): Promise<void> {
  await run('fio', [
    '--name=precondition', `--filename=${path}`, '--ioengine=io_uring', '--direct=1', '--rw=write', '--bs=1M',
    '--iodepth=8', `--size=${size}`, '--output-format=terse',
  ], { maxBuffer: 16 * MiB })
}

async function losetup(file: string): Promise<string> {
  const { stdout } = await run('losetup', ['--direct-io=on', '--show', '-f', file])
  return stdout.trim()
}

/** md raid1, internal bitmap, over loop devices on the two files. */
export function mdRaid1(files: [string, string]): System {
  return {
    name: 'md raid1',
    async prepare(): Promise<Prepared> {
      const loops = [await losetup(files[0]), await losetup(files[1])]
      const md = '/dev/md/ublkbench'
      await run('mdadm', [
        '--create', md, '--run', '--level=1', '--raid-devices=2', '--metadata=1.2',
        '--bitmap=internal', `--bitmap-chunk=${RAID1_CHUNK}`, '--assume-clean', '--homehost=any', ...loops,
      ])
      return {
        path: md,
        async teardown() {
          await run('mdadm', ['--stop', md])
          for (const l of loops) {
            await run('mdadm', ['--zero-superblock', l]).catch(() => undefined)
            await run('losetup', ['-d', l])
          }
        },
      }
    },
  }
}

export const TS_RAID1_OFFLOADED = 'TypeScript RAID1 (offloaded writes)'

export function tsRaid1(files: [string, string], size: number, bitmap: boolean, offloadWrites = false): System {
  return {
    name: offloadWrites ? TS_RAID1_OFFLOADED : bitmap ? 'TypeScript RAID1' : 'TypeScript RAID1 (no bitmap)',
    async prepare(): Promise<Prepared> {
      const md = await createRaid1({ members: files, size, chunkSize: RAID1_CHUNK, bitmap, force: true, depth: DEPTH, offloadWrites })
      return { path: md.path, teardown: () => md.stop() }
    },
  }
}
