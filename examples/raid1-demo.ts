// The RAID1 walk-through: a mirror of two sparse files carrying ext4; files
// are written and checksummed, one member fails and the array goes on
// degraded, the member comes back with an incremental resync (with a
// progress bar), and every checksum verifies at the end.
//
//   node --import tsx examples/raid1-demo.ts
import { execFile } from 'node:child_process'
import { closeSync, openSync, readSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'

import { SingleBar } from 'cli-progress'

import { createRaid1, formatSize, type Raid1Array } from '../lib/index.ts'

const run = promisify(execFile)
const MiB = 1 << 20

/** Runs a shell script in its own mount namespace, so a mount never outlives it. */
async function inNamespace(script: string): Promise<string> {
  const { stdout } = await run('unshare', ['-m', 'sh', '-ec', script], { maxBuffer: 1 << 20 })
  return stdout
}

function describe(md: Raid1Array): string {
  const s = md.status()
  const members = s.members.map((m) => `${m.slot}:${m.state}`).join(' ')
  return `${s.state}, members ${members}, ${s.dirtyChunks} dirty chunk(s) of ${s.chunks}`
}

/** Whether two files hold the same `length` bytes from `offset`. */
function sameData(a: string, b: string, offset: number, length: number): boolean {
  const [fa, fb] = [openSync(a, 'r'), openSync(b, 'r')]
  const [ba, bb] = [Buffer.alloc(MiB), Buffer.alloc(MiB)]
  try {
    for (let done = 0; done < length; done += MiB) {
      const n = Math.min(MiB, length - done)
      readSync(fa, ba, 0, n, offset + done)
      readSync(fb, bb, 0, n, offset + done)
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false
    }
    return true
  } finally {
    closeSync(fa)
    closeSync(fb)
  }
}

async function main(): Promise<void> {
  const started = Date.now()
  const files = ['a', 'b'].map((n) => `/tmp/ublk-raid1-demo-${n}.img`)
  for (const f of files) {
    writeFileSync(f, '')
    truncateSync(f, 65 * MiB)
  }
  // A short clear delay so the demo sees bits clear; the default is 5 s.
  const md = await createRaid1({
    members: files,
    chunkSize: '1M',
    bitmapClearDelayMs: 500,
    resync: { maxBytesPerSec: 16 * MiB },
  })
  md.onChange = (what) => console.log(`  [raid1] ${what}`)
  const { size, chunkSize, dataOffset } = md.status()
  console.log(`mirror ${md.path}: ${formatSize(size)} over ${files.join(' + ')} (sparse), ${formatSize(chunkSize)} bitmap chunks`)
  console.log(`  ${describe(md)}`)
  const mnt = '/tmp/ublk-raid1-demo-mnt'
  const sums = '/tmp/ublk-raid1-demo.sha256'
  try {
    console.log('\next4 on the mirror; 8 files of 2 MB written and checksummed')
    await inNamespace(`
      mkfs.ext4 -q -F ${md.path}; mkdir -p ${mnt}; mount ${md.path} ${mnt}
      for i in 1 2 3 4 5 6 7 8; do head -c 2000000 /dev/urandom > ${mnt}/before-$i; done
      (cd ${mnt} && sha256sum before-*) > ${sums}; umount ${mnt}`)

    await new Promise((resolve) => setTimeout(resolve, 1500))
    console.log(`  idle for a while: ${describe(md)}`)

    console.log('\nmember 1 fails')
    await md.failMember(1)
    console.log(`  ${describe(md)}`)
    console.log('8 more files written while degraded')
    await inNamespace(`
      mount ${md.path} ${mnt}
      for i in 1 2 3 4 5 6 7 8; do head -c 2000000 /dev/urandom > ${mnt}/degraded-$i; done
      (cd ${mnt} && sha256sum degraded-*) >> ${sums}; umount ${mnt}`)
    console.log(`  ${describe(md)}`)

    console.log(`\nmember 1 comes back (${files[1]})`)
    await md.addMember(files[1]!)
    const bar = new SingleBar({ format: '  resync [{bar}] {percentage}% | {value}/{total} chunks | {copied}', hideCursor: true, noTTYOutput: true, notTTYSchedule: 1000 })
    const first = md.status().resync
    bar.start(first?.total ?? 1, first?.done ?? 0, { copied: '0B' })
    const ticker = setInterval(() => {
      const r = md.status().resync
      if (r) bar.update(r.done, { copied: formatSize(r.bytesCopied) })
    }, 100)
    await md.whenResynced()
    clearInterval(ticker)
    const last = md.status().lastResync!
    bar.setTotal(Math.max(last.total, 1))
    bar.update(last.done, { copied: formatSize(last.bytesCopied) })
    bar.stop()
    console.log(`  ${last.kind} resync copied ${last.done} of ${md.status().chunks} chunks in ${((Date.now() - last.startedMs) / 1000).toFixed(1)} s`)
    console.log(`  ${describe(md)}`)

    console.log('\nevery checksum, read back through the mirror:')
    const out = await inNamespace(`
      echo 3 > /proc/sys/vm/drop_caches; mount ${md.path} ${mnt}
      cd ${mnt} && sha256sum -c ${sums} | sed 's/^/  /'; cd /; umount ${mnt}`)
    process.stdout.write(out)
  } finally {
    await md.stop()
  }
  const same = sameData(files[0]!, files[1]!, dataOffset, size)
  console.log(`\nmembers hold identical data: ${same ? 'yes' : 'NO'}`)
  for (const f of [...files, sums]) unlinkSync(f)
  console.log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  if (!same) process.exitCode = 1
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
