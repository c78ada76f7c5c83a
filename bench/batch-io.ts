// Batch IO (UBLK_F_BATCH_IO: many IOs fetched and committed per command)
// against one command per IO, for the Rust null and the TypeScript null
// targets, both on the copy path (libublk's batch transport does not take
// zero copy), back to back. On a kernel without batch IO both runs take
// one command per IO and nothing is compared.
import { createDevice, nullTarget } from '../lib/index.ts'
import { fioRun } from './raid1.ts'
import { DEPTH } from './systems.ts'

/** The workload the `*_batch_vs_per_io` ratios are taken at. */
const WORKLOAD = { name: '4k randread QD32', rw: 'randread', bs: '4k', qd: 32 } as const

export interface BatchPoint {
  system: string
  batchIo: boolean
  iops: number
}

const SYSTEMS = [
  { name: 'Rust null', key: 'rust_null', target: () => 'null' as const },
  { name: 'TypeScript null', key: 'ts_null', target: () => nullTarget() },
]

/** Runs both transports on each system; the points and the `*_batch_vs_per_io` ratios. */
export async function runBatchIo(
  runtime: number,
  log: (line: string) => void,
  failures: string[],
): Promise<{ points: BatchPoint[]; ratios: Record<string, number | null> }> {
  const points: BatchPoint[] = []
  const ratios: Record<string, number | null> = {}
  const size = 1 << 30
  for (const system of SYSTEMS) {
    const iops: Partial<Record<'batch' | 'perIo', number>> = {}
    for (const batchIo of [true, false]) {
      try {
        const dev = await createDevice({ target: system.target(), size, depth: DEPTH, zeroCopy: false, batchIo })
        try {
          const ran = (await dev.info()).batchIo
          const r = await fioRun(dev.path, WORKLOAD, 256 << 20, runtime)
          points.push({ system: system.name, batchIo: ran, iops: r.iops })
          log(`  ${system.name.padEnd(18)} ${ran ? 'batch IO ' : 'per-IO   '} ${WORKLOAD.name}: ${(r.iops / 1000).toFixed(1)}k IOPS`)
          if (ran === batchIo) iops[batchIo ? 'batch' : 'perIo'] = r.iops
        } finally {
          await dev.stop()
        }
      } catch (err) {
        failures.push(`${system.name} ${batchIo ? 'batch IO' : 'per-IO'}: ${String(err).split('\n')[0]}`)
      }
    }
    ratios[`${system.key}_batch_vs_per_io`] = iops.batch !== undefined && iops.perIo ? Number((iops.batch / iops.perIo).toFixed(3)) : null
  }
  return { points, ratios }
}
