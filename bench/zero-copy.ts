// Zero copy against the copy path, for the three systems that move data:
// the Rust loop, the TypeScript loop and the TypeScript RAID1, each run
// both ways back to back on the same backing files. On a kernel without
// UBLK_F_AUTO_BUF_REG both runs take the copy path and nothing is compared.
import { createDevice, createRaid1, loopTarget } from '../lib/index.ts'
import { fioRun, writeWhole, type Raid1Workload } from './raid1.ts'
import { DEPTH, type Prepared } from './systems.ts'

export const ZC_WORKLOADS: Array<Pick<Raid1Workload, 'name' | 'rw' | 'bs' | 'qd'>> = [
  { name: '4k randread QD32', rw: 'randread', bs: '4k', qd: 32 },
  { name: '4k randwrite QD32', rw: 'randwrite', bs: '4k', qd: 32 },
  { name: '128k randread QD8', rw: 'randread', bs: '128k', qd: 8 },
  { name: '128k randwrite QD8', rw: 'randwrite', bs: '128k', qd: 8 },
]

/** The workload the `*_zc_vs_copy` ratios are taken at. */
export const ZC_RATIO_WORKLOAD = '128k randwrite QD8'

export interface ZcPoint {
  system: string
  workload: string
  zeroCopy: boolean
  iops: number
  bw: number
}

interface ZcSystem {
  name: string
  key: string
  prepare(zeroCopy: boolean): Promise<Prepared & { zeroCopy: boolean }>
}

/** The systems, over `loopFile` (loops) and `members` (RAID1), all of `size` bytes of data. */
export function zeroCopySystems(loopFile: string, members: [string, string], size: number): ZcSystem[] {
  const withPath = async (dev: { path: string; info(): Promise<{ zeroCopy: boolean }>; stop(): Promise<void> }) => ({
    path: dev.path,
    zeroCopy: (await dev.info()).zeroCopy,
    teardown: () => dev.stop(),
  })
  return [
    {
      name: 'Rust loop',
      key: 'rust_loop',
      prepare: async (zeroCopy) => withPath(await createDevice({ target: 'loop', path: loopFile, size, depth: DEPTH, zeroCopy })),
    },
    {
      name: 'TypeScript loop',
      key: 'ts_loop',
      prepare: async (zeroCopy) => withPath(await createDevice({ target: loopTarget(loopFile), size, depth: DEPTH, zeroCopy })),
    },
    {
      name: 'TypeScript RAID1',
      key: 'raid1',
      async prepare(zeroCopy) {
        const md = await createRaid1({ members, size, chunkSize: '1M', force: true, depth: DEPTH, zeroCopy })
        // Its members start as holes; measured, like the loops' file, with their blocks in place.
        await writeWhole(md.path, size).catch(async (err: unknown) => {
          await md.stop()
          throw err
        })
        return { path: md.path, zeroCopy: (await md.device.info()).zeroCopy, teardown: () => md.stop() }
      },
    },
  ]
}

/**
 * Runs every workload on every system, zero copy then copy. Returns the
 * points and the `*_zc_vs_copy` ratios (null where zero copy did not run).
 */
export async function runZeroCopy(
  systems: ZcSystem[],
  workloads: typeof ZC_WORKLOADS,
  size: number,
  runtime: number,
  log: (line: string) => void,
  failures: string[],
): Promise<{ points: ZcPoint[]; ratios: Record<string, number | null> }> {
  const points: ZcPoint[] = []
  for (const w of workloads) {
    for (const system of systems) {
      for (const zeroCopy of [true, false]) {
        let dev: (Prepared & { zeroCopy: boolean }) | undefined
        try {
          dev = await system.prepare(zeroCopy)
          const r = await fioRun(dev.path, w, size, runtime)
          points.push({ system: system.name, workload: w.name, zeroCopy: dev.zeroCopy, ...r })
          log(`  ${system.name.padEnd(18)} ${(dev.zeroCopy ? 'zero copy' : 'copy').padEnd(10)} ${w.name}: ${(r.bw / (1 << 20)).toFixed(1)} MiB/s`)
        } catch (err) {
          failures.push(`${system.name} ${zeroCopy ? 'zero copy' : 'copy'} ${w.name}: ${String(err).split('\n')[0]}`)
        } finally {
          await dev?.teardown()
        }
      }
    }
  }
  const ratios: Record<string, number | null> = {}
  for (const system of systems) {
    const bw = (zeroCopy: boolean) =>
      points.find((p) => p.system === system.name && p.workload === ZC_RATIO_WORKLOAD && p.zeroCopy === zeroCopy)?.bw
    const zc = bw(true)
    const copy = bw(false)
    ratios[`${system.key}_zc_vs_copy`] = zc !== undefined && copy ? Number((zc / copy).toFixed(3)) : null
  }
  return { points, ratios }
}
