// Metrics on a real device: exact counts for Rust and TypeScript targets
// (passthrough included), an injected errno, `ublk-ts stats` from another
// process, and the Prometheus endpoint under fio.
import { unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice, createRaid1, deviceStats, loopTarget, type DeviceStats, type Io } from '../../../lib/index.ts'

import { serve, ublkTs } from '../../helpers/cli.ts'
import { scratchFile } from '../../helpers/files.ts'
import { fio } from '../../helpers/fio.ts'
import { requireUblk } from '../../helpers/kernel.ts'
import { sh } from '../../helpers/shell.ts'

test.before(async () => {
  requireUblk()
  // The test VM starts with its loopback down; the metrics endpoint is on 127.0.0.1.
  await sh('ip', ['link', 'set', 'lo', 'up'])
})

const MiB = 1 << 20

/** `count` direct 4 KiB writes at `seek` (in 4 KiB blocks). */
function ddWrite(path: string, count: number, seek = 0) {
  return sh('dd', ['if=/dev/zero', `of=${path}`, 'bs=4k', `count=${count}`, `seek=${seek}`, 'oflag=direct', 'conv=nocreat'])
}

function consistent(t: import('ava').ExecutionContext, s: DeviceStats): void {
  for (const q of [...s.queues, s.total]) {
    t.is(
      q.write.buckets.reduce((a, b) => a + b, 0),
      q.write.ios,
      'the histogram counts every IO',
    )
  }
  t.is(
    s.queues.reduce((n, q) => n + q.write.ios, 0),
    s.total.write.ios,
    'the total adds the queues up',
  )
}

test.serial('a Rust target counts exactly the writes it completed', async (t) => {
  const dev = await createDevice({ target: 'null', size: 64 * MiB, queues: 2 })
  try {
    const before = dev.stats()
    t.is(before.queues.length, 2)
    t.is(before.pid, process.pid)
    const dd = await ddWrite(dev.path, 24)
    t.is(dd.code, 0, dd.stderr)
    const after = dev.stats()
    t.is(after.total.write.ios - before.total.write.ios, 24)
    t.is(after.total.write.bytes - before.total.write.bytes, 24 * 4096)
    t.is(after.total.write.errors, 0)
    t.true(after.total.write.latencyNs > before.total.write.latencyNs)
    t.is(after.dispatch, undefined, 'no JavaScript dispatch for a Rust target')
    consistent(t, after)
  } finally {
    await dev.stop()
  }
  const last = dev.stats()
  t.true(last.total.write.ios >= 24, 'the last figures stay readable once stopped')
})

test.serial('TypeScript targets: passthrough writes, RAID1 writes and an injected errno are counted', async (t) => {
  const file = scratchFile('metrics-loop', 16 * MiB)
  t.teardown(() => unlinkSync(file))
  const loop = await createDevice({ target: loopTarget(file), size: 16 * MiB })
  try {
    const before = loop.stats()
    t.is((await ddWrite(loop.path, 10, 16)).code, 0)
    const after = loop.stats()
    t.is(after.total.write.ios - before.total.write.ios, 10, 'passthrough writes never reach JavaScript, and are counted')
    t.is(after.total.write.bytes - before.total.write.bytes, 10 * 4096)
    t.truthy(after.dispatch)
  } finally {
    await loop.stop()
  }

  const members = [0, 1].map((i) => scratchFile(`metrics-raid1-${i}`, 18 * MiB))
  t.teardown(() => members.forEach((m) => unlinkSync(m)))
  const md = await createRaid1({ members, chunkSize: '64k' })
  try {
    t.is((await ddWrite(md.path, 8)).code, 0)
    const s = md.device.stats()
    t.is(s.total.write.ios, 8, 'a RAID1 array counts its device IOs')
    t.is(s.total.write.bytes, 8 * 4096)
  } finally {
    await md.stop()
  }

  const full = Object.assign(new Error('full'), { code: 'ENOSPC' })
  const target = {
    read(io: Io) {
      io.buffer.fill(0)
    },
    write(io: Io) {
      if (io.offset === MiB) throw full
    },
  }
  const dev = await createDevice({ target, size: 8 * MiB })
  try {
    t.is((await ddWrite(dev.path, 3)).code, 0)
    const failed = await ddWrite(dev.path, 1, MiB / 4096)
    t.not(failed.code, 0)
    const s = dev.stats()
    t.is(s.total.write.ios, 4)
    t.is(s.total.write.errors, 1)
    t.is(s.total.write.bytes, 3 * 4096, 'a failed write moves no bytes')
    t.deepEqual(s.total.errnos, { ENOSPC: 1 })
    t.deepEqual(s.queues[0]!.errnos, { ENOSPC: 1 })
  } finally {
    await dev.stop()
  }
})

/** Sums a counter's samples for `op` in the Prometheus text. */
function scraped(text: string, metric: string, op: string): number {
  let sum = 0
  for (const m of text.matchAll(new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`, 'gm'))) {
    if (m[1]!.includes(`op="${op}"`)) sum += Number(m[2])
  }
  return sum
}

async function curl(url: string): Promise<string> {
  const r = await sh('curl', ['-sSf', url])
  if (r.code !== 0) throw new Error(`curl ${url}: ${r.stderr}`)
  return r.stdout
}

test.serial('ublk-ts stats from another process, and curl of --metrics under fio', async (t) => {
  const server = serve('add', 'null', '--size', '256M', '--queues', '2', '--metrics', '0')
  const path = await server.path
  const id = Number(path.replace('/dev/ublkb', ''))
  try {
    const url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(server.output())?.[1]
    t.truthy(url, server.output())
    // A new device gets no write but these (the kernel only reads it).
    t.is((await ddWrite(path, 16)).code, 0)
    const r = await ublkTs('stats', String(id), '--json')
    t.is(r.code, 0, r.stderr)
    const s = JSON.parse(r.stdout) as DeviceStats
    t.is(s.pid, server.child.pid!, 'read from the serving process')
    t.is(s.queues.length, 2)
    t.is(s.total.write.ios, 16)
    t.is(s.total.write.bytes, 16 * 4096)
    consistent(t, s)

    // One scrape after fio: the endpoint starts from what ublk-ts stats said.
    const job = await fio(path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '2M' })
    t.is(job.errors, 0)
    t.true(job.writeIos > 0)
    const scrape = await curl(url!)
    t.regex(scrape, /# TYPE ublk_io_latency_seconds histogram/)
    t.is(scraped(scrape, 'ublk_ios_total', 'write'), 16 + job.writeIos, 'every fio write counted')
    t.is(scraped(scrape, 'ublk_bytes_total', 'write'), (16 + job.writeIos) * 4096)
    t.is(scraped(scrape, 'ublk_io_latency_seconds_count', 'write'), 16 + job.writeIos)
    t.true(scraped(scrape, 'ublk_io_latency_seconds_sum', 'write') > s.total.write.latencyNs / 1e9)
    t.true(scraped(scrape, 'ublk_ios_total', 'read') >= s.total.read.ios)
  } finally {
    server.child.kill('SIGTERM')
    t.is(await server.exited, 0, server.output())
  }
  // This test is another process too: once the server is gone, so are its figures.
  const gone = t.throws(() => deviceStats(id))
  t.is((gone as { code?: string }).code, 'ENODEV')
})
