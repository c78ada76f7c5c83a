// `ublk-ts raid1 ...`: create or assemble an array and serve it in the
// foreground; status, fail, add and stop talk to that process.
import type { Command } from 'commander'

import type { Recovery } from '../device.js'
import { UblkError } from '../errors.js'
import { formatSize } from '../size.js'
import type { Raid1Array, Raid1Status } from './array.js'
import { askForHandOver, handOverOrExit, untilStopOrHandOver } from '../handover.js'
import { request, serveControl } from './control.js'
import { metricsPortOption, serveMetrics } from '../metrics/cli.js'
import type { StatsSource } from '../metrics/prometheus.js'

interface ServeOptions {
  chunk?: number
  size?: number
  force?: boolean
  assumeClean?: boolean
  bitmap: boolean
  queues: number
  depth: number
  zeroCopy: boolean
  workers: boolean
  offloadWrites?: boolean
  recovery: Recovery
  recover?: number
  standby?: boolean
  takeOver?: boolean
  metrics?: number
}

function summary(s: Raid1Status): string {
  const lines = [
    `${s.device.path}: RAID1 ${s.state}, ${formatSize(s.size)}, ${formatSize(s.chunkSize)} chunks, ${s.dirtyChunks}/${s.chunks} dirty, events ${s.events}`,
    ...s.members.map(
      (m) => `  slot ${m.slot} ${m.state.padEnd(10)} ${m.path}  (read errors ${m.readErrors}, write errors ${m.writeErrors}, repaired ${m.repairedReads})`,
    ),
  ]
  if (s.queueWorkers > 0) lines.push(`  queues 1 to ${s.queueWorkers} served by worker threads`)
  if (s.offloadWrites) lines.push("  member writes run on io_uring's worker threads")
  if (s.resync) lines.push(`  ${s.resync.kind} resync: ${s.resync.done}/${s.resync.total} chunks`)
  return lines.join('\n')
}

/** A progress bar that follows resyncs, fed by `poll` every 250 ms until `done` says stop. */
async function followResync(poll: () => Promise<Raid1Status> | Raid1Status, done: (s: Raid1Status) => boolean): Promise<void> {
  // Loaded when needed: every process start of the CLI would pay for it.
  const { SingleBar } = await import('cli-progress')
  const bar = new SingleBar({
    format: 'resync ({kind}) [{bar}] {percentage}% | {value}/{total} chunks | {copied}',
    hideCursor: true,
    noTTYOutput: true,
    notTTYSchedule: 2000,
    stream: process.stderr,
  })
  let shown = false
  for (;;) {
    const s = await poll()
    const r = s.resync
    if (r) {
      if (!shown) bar.start(r.total, r.done, { kind: r.kind, copied: '0B' })
      shown = true
      bar.setTotal(r.total)
      bar.update(r.done, { kind: r.kind, copied: formatSize(r.bytesCopied) })
    } else if (shown) {
      const last = s.lastResync
      if (last) bar.update(last.done, { copied: formatSize(last.bytesCopied) })
      bar.stop()
      shown = false
    }
    if (done(s)) break
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  if (shown) bar.stop()
}

async function serve(md: Raid1Array, exposed?: StatsSource[]): Promise<void> {
  exposed?.push(md.device)
  md.onChange = (what) => console.error(`raid1: ${what}`)
  let stop!: () => void
  const stopped = new Promise<void>((resolve) => (stop = resolve))
  const control = serveControl(md, stop)
  // Listening before saying so: whoever reads the line may signal at once.
  const ending = untilStopOrHandOver(md.device)
  console.log(`serving ${md.path} (RAID1 ${md.status().state}); Ctrl-C, SIGTERM or \`ublk-ts raid1 stop ${md.id}\` to stop`)
  let handOver = false
  let finished = false
  void ending.then(({ how, signal }) => {
    if (finished) return
    handOver = how === 'hand-over'
    if (how === 'gone') console.log(`${md.path} was deleted by another process; nothing left to serve`)
    else if (how === 'stop' && signal) console.log(`${signal}: stopping ${md.path}`)
    stop()
  })
  const progress = followResync(
    () => md.status(),
    () => finished,
  )
  await stopped
  finished = true
  await progress
  control.close()
  try {
    if (handOver) return await handOverOrExit(md.device, console.log, () => md.handOver())
    await md.stop()
    console.log(`${md.path} stopped cleanly`)
  } finally {
    // Stopped by `ublk-ts raid1 stop`, the signals were never taken: let them go.
    void ending.then(({ release }) => release())
  }
}

export interface Parsers {
  size: (s: string) => number
  count: (s: string) => number
  recovery: (s: string) => Recovery
}

export function addRaid1Commands(cli: Command, parse: Parsers): void {
  const { size: parseSize, count: parseCount } = parse
  const raid1 = cli.command('raid1').description('RAID1 mirrors served by a TypeScript target')
  const geometry = (c: Command) =>
    c
      .option('-q, --queues <n>', 'hardware queues', parseCount, 1)
      .option('-d, --depth <n>', 'IOs in flight per queue', parseCount, 128)
      .option('--no-zero-copy', 'copy IO data through user space even where the kernel has zero copy')
      .option('--no-workers', 'serve every queue on this thread (by default each queue but queue 0 gets a worker thread)')
      .option('--offload-writes', "write the members from io_uring's worker threads, side by side (for members whose writes cost CPU: RAM disks, emulation)")
      .option('--recovery <mode>', "when this process dies: none (the device dies too) or reissue (it waits for 'raid1 assemble --recover')", parse.recovery, 'none')
      .addOption(metricsPortOption())
  geometry(
    raid1
      .command('create')
      .description('create an array on new members and serve it in the foreground')
      .argument('<members...>', 'member files or block devices')
      .option('-c, --chunk <bytes>', 'bitmap chunk size (default 1M)', parseSize)
      .option('-s, --size <bytes>', 'array size (default: what the smallest member holds)', parseSize)
      .option('--no-bitmap', 'no write-intent bitmap (a crash then resyncs everything)')
      .option('--assume-clean', 'block-device members already hold the same data: no initial sync')
      .option('--force', 'overwrite members that belong to another array'),
  ).action(async (members: string[], o: ServeOptions) => {
    const { createRaid1 } = await import('./array.js')
    const exposed: StatsSource[] = []
    const metrics = await serveMetrics(o.metrics, exposed)
    await serve(
      await createRaid1({
        members,
        queues: o.queues,
        depth: o.depth,
        zeroCopy: o.zeroCopy,
        workers: o.workers,
        recovery: o.recovery,
        bitmap: o.bitmap,
        ...(o.offloadWrites ? { offloadWrites: true } : {}),
        ...(o.chunk !== undefined ? { chunkSize: o.chunk } : {}),
        ...(o.size !== undefined ? { size: o.size } : {}),
        ...(o.force ? { force: true } : {}),
        ...(o.assumeClean ? { assumeClean: true } : {}),
      }),
      exposed,
    )
    await metrics?.close()
  })
  geometry(
    raid1
      .command('assemble')
      .description('assemble an existing array and serve it in the foreground (resyncs what needs it)')
      .argument('<members...>', 'member files or block devices')
      .option('--recover <id>', 'take over device <id>, whose server died, instead of adding a new one', parseCount)
      .option('--standby', 'with --recover: wait while the device is still served, and take it over when its server dies')
      .option('--take-over', 'with --recover: ask the running server to hand the array over, and take it over (a live upgrade)'),
  ).action(async (members: string[], o: ServeOptions) => {
    if ((o.standby || o.takeOver) && o.recover === undefined) throw new UblkError('EINVAL', '--standby and --take-over go with --recover <id>')
    const { assembleRaid1 } = await import('./array.js')
    const exposed: StatsSource[] = []
    const metrics = await serveMetrics(o.metrics, exposed)
    const handOver = o.takeOver ? await askForHandOver(o.recover!) : undefined
    if (o.standby) console.log(`standing by for /dev/ublkb${o.recover}: taking it over when its server dies`)
    const recover = o.recover !== undefined ? { recover: o.recover, standby: o.standby === true || handOver !== undefined } : {}
    const md = await assembleRaid1({ members, queues: o.queues, depth: o.depth, zeroCopy: o.zeroCopy, workers: o.workers, recovery: o.recovery, ...(o.offloadWrites ? { offloadWrites: true } : {}), ...recover })
    if (handOver) console.log(`took /dev/ublkb${md.id} over from pid ${handOver.pid}: its IO waited at most ${Date.now() - handOver.at} ms`)
    await serve(md, exposed)
    await metrics?.close()
  })
  raid1
    .command('status')
    .description('state, members and resync progress of a served array')
    .argument('<id>', 'device id', parseCount)
    .option('--json', 'as JSON')
    .option('-w, --watch', 'follow a running resync with a progress bar until it ends')
    .action(async (id: number, o: { json?: boolean; watch?: boolean }) => {
      const get = () => request(id, { cmd: 'status' }) as Promise<Raid1Status>
      if (o.watch) await followResync(get, (s) => !s.resync)
      const s = await get()
      console.log(o.json ? JSON.stringify(s, null, 2) : summary(s))
    })
  raid1
    .command('fail')
    .description('mark a member faulty; the array goes on degraded')
    .argument('<id>', 'device id', parseCount)
    .argument('<slot>', 'member slot', parseCount)
    .action(async (id: number, slot: number) => {
      await request(id, { cmd: 'fail', slot })
      console.log(`slot ${slot} of /dev/ublkb${id} is faulty`)
    })
  raid1
    .command('add')
    .description('add a member: the one that left resyncs what changed, a new one everything')
    .argument('<id>', 'device id', parseCount)
    .argument('<path>', 'member file or block device')
    .option('--force', 'overwrite a member of another array')
    .action(async (id: number, path: string, o: { force?: boolean }) => {
      await request(id, { cmd: 'add', path, force: o.force === true })
      console.log(`${path} added to /dev/ublkb${id}; \`ublk-ts raid1 status ${id} --watch\` follows the resync`)
    })
  raid1
    .command('stop')
    .description('stop a served array cleanly')
    .argument('<id>', 'device id', parseCount)
    .action(async (id: number) => {
      await request(id, { cmd: 'stop' })
      console.log(`stopping /dev/ublkb${id}`)
    })
}
