// What a ublk server must survive, after the kernel's own selftests: its
// device deleted by another process under IO, its process killed under
// IO (fio ends with errors instead of hanging, and no device is left),
// and processes creating and deleting devices in parallel (no device,
// open file or memory left behind).
import { execFile } from 'node:child_process'
import { unlinkSync } from 'node:fs'
import { promisify } from 'node:util'

import test from 'ava'

import { deleteDevice, deviceInfo, listDevices } from '../../../lib/index.ts'

import { fixture } from '../../helpers/child.ts'
import { serve, ublkTs } from '../../helpers/cli.ts'
import { scratchFile } from '../../helpers/files.ts'
import { deviceGone, inFlight, requireUblk } from '../../helpers/kernel.ts'
import { until } from '../../helpers/poll.ts'
import { sh } from '../../helpers/shell.ts'

const run = promisify(execFile)
const MiB = 1 << 20

test.before(() => requireUblk())

const servers: Array<{ name: string; files: number; add(files: string[]): string[] }> = [
  { name: 'TypeScript loop', files: 1, add: ([f]) => ['add', 'loop', '--ts', '--path', f!] },
  { name: 'Rust loop', files: 1, add: ([f]) => ['add', 'loop', '--path', f!] },
  { name: 'RAID1', files: 2, add: (members) => ['raid1', 'create', ...members, '--chunk', '64k'] },
]

for (const { name, files: fileCount, add } of servers) {
  for (const how of ['deleted by another process', 'killed with -9'] as const) {
    test.serial(`${name}, ${how} under fio: fio ends with errors, the server ends, no device is left`, async (t) => {
      const files = Array.from({ length: fileCount }, (_, i) => scratchFile(`stress-${name.length}-${i}`, 40 * MiB))
      const server = serve(...add(files))
      const dev = await server.path
      const id = Number(dev.replace('/dev/ublkb', ''))
      const job = sh('fio', ['--name=stress', `--filename=${dev}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw', '--bs=4k',
        '--iodepth=16', '--size=32M', '--time_based', '--runtime=120', '--output-format=terse'], 180_000)
      await until(() => inFlight(dev) > 0, 'fio has IO in flight', 60_000)
      const at = Date.now()
      if (how === 'deleted by another process') {
        await deleteDevice(id)
      } else {
        server.child.kill('SIGKILL')
      }
      const r = await job
      const took = Date.now() - at
      t.true(r.code > 0, `fio saw its device go and ended by itself (exit ${r.code})`)
      t.true(took < 30_000, `fio ended ${took} ms after`)
      t.log(`fio ended ${took} ms after the device was ${how === 'killed with -9' ? 'left without its server' : 'deleted'}`)
      const exit = await server.exited
      if (how === 'deleted by another process') {
        t.is(exit, 0, server.output())
        t.regex(server.output(), /deleted by another process/)
      } else {
        t.is(exit, 'SIGKILL')
        await until(async () => (await deviceInfo(id)).state === 'dead', 'the kernel marks the device dead', 60_000)
        const del = await ublkTs('delete', '--dead')
        t.is(del.code, 0, del.stderr)
      }
      await until(() => deviceGone(id), 'no device is left')
      for (const f of files) unlinkSync(f)
    })
  }
}

interface ChurnReport {
  ids: number[]
  fdsBefore: number
  fdsAfter: number
  rssBefore: number
  rssAfter: number
  added?: string[]
  error?: string
}

const CHURN_PROCESSES = 8
const CHURN_CYCLES = 16

test.serial(`churn: ${CHURN_PROCESSES} processes create and delete ${CHURN_CYCLES} devices each at once; no device, open file or memory left behind`, async (t) => {
  const before = (await listDevices()).map((d) => d.id)
  const file = scratchFile('churn', 8 * MiB)
  const reports = await Promise.all(
    Array.from({ length: CHURN_PROCESSES }, async () => {
      // Each thread of libuv's pool that sends ublk control commands keeps
      // one io_uring for them, made on first use: with one such thread the
      // count of open files is exact after the first cycle.
      // A fixture that failed exits 1 after printing its error as JSON.
      const { stdout } = await run(process.execPath, ['--expose-gc', fixture('churn.ts'), file, String(CHURN_CYCLES)], {
        timeout: 300_000,
        env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
      }).catch((err: { stdout?: string; message: string }) => ({ stdout: err.stdout || JSON.stringify({ error: err.message }) }))
      return JSON.parse(stdout.trim().split('\n').pop()!) as ChurnReport
    }),
  )
  for (const r of reports) {
    t.is(r.error, undefined)
    t.is(r.ids.length, CHURN_CYCLES)
    t.is(r.fdsAfter, r.fdsBefore, `open files are back where they were; new: ${r.added?.join(', ')}`)
    t.true(r.rssAfter - r.rssBefore < 32 * MiB, `memory grew by ${((r.rssAfter - r.rssBefore) / MiB).toFixed(1)} MiB`)
  }
  const growth = reports.map((r) => ((r.rssAfter - r.rssBefore) / MiB).toFixed(1))
  t.log(`${CHURN_PROCESSES * CHURN_CYCLES} devices; memory growth per process over ${CHURN_CYCLES - 2} cycles: ${growth.join(', ')} MiB`)
  t.deepEqual((await listDevices()).map((d) => d.id), before, 'no device is left')
  unlinkSync(file)
})
