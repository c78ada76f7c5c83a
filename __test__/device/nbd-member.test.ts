// A RAID1 member across the network, on an existing protocol: one member
// is /dev/nbdN, the kernel's NBD client, connected over loopback TCP to
// nbdkit serving a file. The NBD server dies under fio: the member is
// marked faulty and fio sees no error; it comes back and is re-added:
// an incremental resync, and the members end identical.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, unlinkSync } from 'node:fs'

import test from 'ava'

import { createRaid1 } from '../../lib/index.ts'

import { scratchFile } from '../helpers/files.ts'
import { inFlight, requireUblk } from '../helpers/kernel.ts'
import { until } from '../helpers/poll.ts'
import { digestRange } from '../helpers/raid1.ts'
import { sh } from '../helpers/shell.ts'

const MiB = 1 << 20
const hasNbd = existsSync('/sys/module/nbd') && spawnSync('sh', ['-c', 'command -v nbdkit && command -v nbd-client']).status === 0

test.before(() => requireUblk())

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
    const [port1, port2] = [20000 + (process.pid % 20000), 40000 + (process.pid % 20000)]
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
      await md.stop()
      await sh('nbd-client', ['-d', '/dev/nbd0'])
      await sh('nbd-client', ['-d', '/dev/nbd1'])
      server.kill('SIGTERM')
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
