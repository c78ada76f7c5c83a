#!/usr/bin/env node
// ublk-ts: add, list, inspect and delete ublk devices from the shell.
import { Command, InvalidArgumentError } from 'commander'

import {
  createDevice,
  deleteDevice,
  deviceInfo,
  kernelFeatures,
  listDevices,
  recoverDevice,
  type Device,
  type DeviceInfo,
  type BuiltinTarget,
  type Recovery,
} from './device.js'
import { toUblkError, UblkError } from './errors.js'
import type { Filter } from './filters/index.js'
import { askForHandOver } from './handover.js'
import { addStatsCommand, metricsPortOption, serveMetrics } from './metrics/cli.js'
import { addRaid1Commands } from './raid1/cli.js'
import { loadTarget, parseTargetArgs } from './target-module.js'
import { addServeCommand, collectFilter, refuseFiltersWithout, refuseProcessBoundFilters, serveUntilSignal, stackFilters } from './serve-cli.js'
import { parseSize as parseSizeOf } from './size.js'
import { loopTarget, nullTarget } from './targets/index.js'
import type { Target } from './target.js'

/** Parses sizes such as 4096, 512k, 64M, 1G (powers of 1024). */
export function parseSize(text: string): number {
  try {
    return parseSizeOf(text)
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message)
  }
}

function parseCount(text: string): number {
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`not a whole number: ${text}`)
  return Number(text)
}

function parseRecovery(text: string): Recovery {
  if (text !== 'none' && text !== 'reissue' && text !== 'fail-io') {
    throw new InvalidArgumentError(`not a recovery mode: ${text} (none or reissue)`)
  }
  return text
}

function describe(d: DeviceInfo): string {
  const size = d.size >= 2 ** 30 ? `${(d.size / 2 ** 30).toFixed(1)}G` : `${(d.size / 2 ** 20).toFixed(1)}M`
  const server = d.serverAlive ? `pid ${d.serverPid}` : d.state === 'quiesced' ? 'server gone, recoverable' : 'server gone'
  return `${d.blockPath.padEnd(14)} ${d.state.padEnd(9)} ${size.padStart(8)}  ${d.queues} queue(s) x ${d.depth}  ${server}`
}

interface AddOptions {
  size?: number
  path?: string
  queues: number
  depth: number
  blockSize: number
  ts?: boolean
  zeroCopy: boolean
  batchIo?: boolean
  recovery: Recovery
  filter: Filter[]
  metrics?: number
}

/** The target a kind name and --ts/--path stand for. */
function targetOf(kind: string, opts: { path?: string; ts?: boolean; filter: Filter[] }): { target: BuiltinTarget | Target; path?: string } {
  if (kind !== 'null' && kind !== 'loop') {
    throw new UblkError('EINVAL', `unknown target ${JSON.stringify(kind)}: null or loop`)
  }
  if (kind === 'loop' && !opts.path) throw new UblkError('EINVAL', 'the loop target needs --path FILE')
  refuseFiltersWithout(opts.filter, opts.ts)
  if (!opts.ts) return kind === 'null' ? { target: 'null' } : { target: 'loop', path: opts.path }
  return { target: stackFilters(kind === 'null' ? nullTarget() : loopTarget(opts.path!), opts.filter) }
}

async function add(kind: string, opts: AddOptions): Promise<void> {
  if (opts.recovery !== 'none') refuseProcessBoundFilters(opts.filter, 'with --recovery')
  const target = targetOf(kind, opts)
  let size = opts.size
  if (size === undefined && opts.path) size = (await import('node:fs')).statSync(opts.path).size
  if (size === undefined) throw new UblkError('EINVAL', 'give the device a --size')
  const geometry = { size, queues: opts.queues, depth: opts.depth, logicalBlockSize: opts.blockSize, zeroCopy: opts.zeroCopy, batchIo: opts.batchIo === true }
  const served: Device[] = []
  const metrics = await serveMetrics(opts.metrics, served)
  const dev = await createDevice({ ...geometry, ...target, recovery: opts.recovery })
  served.push(dev)
  await serveUntilSignal(dev, `${opts.ts ? 'TypeScript' : 'Rust'} ${kind}`)
  await metrics?.close()
}

interface RecoverCliOptions {
  path?: string
  ts?: boolean
  standby?: boolean
  takeOver?: boolean
  filter: Filter[]
}

/** A target argument that names a module file rather than a built-in kind. */
function isModulePath(kind: string): boolean {
  return /\.[cm]?[jt]sx?$/.test(kind) || kind.includes('/')
}

async function recover(id: number, kind: string, words: string[], opts: RecoverCliOptions): Promise<void> {
  refuseProcessBoundFilters(opts.filter, 'on a device taken over')
  let target: { target: BuiltinTarget | Target; path?: string }
  let what: string
  if (isModulePath(kind)) {
    // The module's new version, made for the device as it is.
    const info = await deviceInfo(id)
    const geometry = { size: info.size, queues: info.queues, depth: info.depth, logicalBlockSize: info.logicalBlockSize }
    target = { target: stackFilters(await loadTarget(kind, parseTargetArgs(words), geometry), opts.filter) }
    what = kind
  } else {
    if (words.length > 0) throw new UblkError('EINVAL', `target options are for a target module, not ${kind}`)
    target = targetOf(kind, opts)
    what = `${opts.ts ? 'TypeScript' : 'Rust'} ${kind}`
  }
  if (typeof target.target !== 'string' && opts.takeOver) {
    // Checked before the running server is asked to go: once it went, a
    // refusal would leave the device without one.
    const info = await deviceInfo(id)
    const readOnly = typeof target.target.write !== 'function'
    if (readOnly !== info.readOnly) {
      throw new UblkError('EINVAL', `/dev/ublkb${id} is ${info.readOnly ? 'read-only' : 'writable'}, the new target is not: it would not be taken over`)
    }
  }
  const handOver = opts.takeOver ? await askForHandOver(id) : undefined
  if (opts.standby) console.log(`standing by for /dev/ublkb${id}: taking it over when its server dies`)
  const dev = await recoverDevice(id, { ...target, standby: opts.standby === true || handOver !== undefined })
  if (handOver) console.log(`took /dev/ublkb${id} over from pid ${handOver.pid}: its IO waited at most ${Date.now() - handOver.at} ms`)
  await serveUntilSignal(dev, `recovered, ${what}`)
}

export function program(): Command {
  const cli = new Command('ublk-ts').description('Linux ublk block devices served from Node.js').showHelpAfterError()
  cli
    .command('add')
    .description('add a device and serve it in the foreground until Ctrl-C')
    .argument('<target>', 'null or loop')
    .option('-s, --size <bytes>', 'capacity, e.g. 1G (loop: the file size by default)', parseSize)
    .option('-p, --path <file>', 'backing file or block device (loop)')
    .option('-q, --queues <n>', 'hardware queues', parseCount, 1)
    .option('-d, --depth <n>', 'IOs in flight per queue', parseCount, 128)
    .option('-b, --block-size <bytes>', 'logical block size', parseCount, 512)
    .option('--ts', 'serve with the TypeScript target instead of the Rust one')
    .option('-f, --filter <name[:key=value,...]>', 'with --ts: stack a filter over the target (repeatable; the first is outermost)', collectFilter, [])
    .option('--no-zero-copy', 'copy IO data through user space even where the kernel has zero copy')
    .option('--batch-io', 'on the copy path, fetch and commit IOs many per command where the kernel has UBLK_F_BATCH_IO')
    .option('--recovery <mode>', "when this process dies: none (the device dies too) or reissue (it waits for 'ublk-ts recover')", parseRecovery, 'none')
    .addOption(metricsPortOption())
    .action(add)
  addServeCommand(cli, { size: parseSize, count: parseCount, recovery: parseRecovery })
  cli
    .command('recover')
    .description('take over a device whose server died (added with --recovery reissue) and serve it until Ctrl-C')
    .argument('<id>', 'device id', parseCount)
    .argument('<target>', 'null or loop, like the server that died, or a target module file (see serve)')
    .argument('[target-options...]', "after --: a target module's own options")
    .option('-p, --path <file>', 'backing file or block device (loop)')
    .option('--ts', 'serve with the TypeScript target instead of the Rust one')
    .option('-f, --filter <name[:key=value,...]>', 'TypeScript targets: stack a filter over the target (repeatable)', collectFilter, [])
    .option('--standby', 'wait while the device is still served, and take it over the moment its server dies')
    .option('--take-over', 'ask the running server to hand the device over, and take it over (a live upgrade)')
    .action(recover)
  cli
    .command('upgrade')
    .description('a live upgrade: take a device over from the process serving it (added with --recovery reissue), with no IO failing')
    .argument('<id>', 'device id', parseCount)
    .argument('<target>', 'null or loop, or a target module file: its new version')
    .argument('[target-options...]', "after --: a target module's own options")
    .option('-p, --path <file>', 'backing file or block device (loop)')
    .option('--ts', 'serve with the TypeScript target instead of the Rust one')
    .option('-f, --filter <name[:key=value,...]>', 'TypeScript targets: stack a filter over the target (repeatable)', collectFilter, [])
    .action((id: number, kind: string, words: string[], opts: RecoverCliOptions) => recover(id, kind, words, { ...opts, takeOver: true }))
  cli
    .command('list')
    .description('list every ublk device')
    .option('--json', 'as JSON')
    .action(async (opts: { json?: boolean }) => {
      const devices = await listDevices()
      if (opts.json) console.log(JSON.stringify(devices, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2))
      else if (devices.length === 0) console.log('no ublk devices')
      else for (const d of devices) console.log(describe(d))
    })
  cli
    .command('info')
    .description("one device's info, as JSON")
    .argument('<id>', 'device id', parseCount)
    .action(async (id: number) => {
      const info = await deviceInfo(id)
      console.log(JSON.stringify(info, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2))
    })
  cli
    .command('delete')
    .alias('del')
    .description('stop and delete a device, or every device whose server is gone (--dead)')
    .argument('[id]', 'device id', parseCount)
    .option('--dead', 'every device no process holds open any more (left behind by a server that died)')
    .action(async (id: number | undefined, opts: { dead?: boolean }) => {
      if ((id === undefined) === !opts.dead) throw new UblkError('EINVAL', 'give either a device id or --dead')
      const ids = id !== undefined ? [id] : (await listDevices()).filter((d) => !d.serverAlive).map((d) => d.id)
      for (const each of ids) {
        await deleteDevice(each)
        console.log(`deleted /dev/ublkb${each}`)
      }
      if (opts.dead && ids.length === 0) console.log('no device whose server is gone')
    })
  addRaid1Commands(cli, { size: parseSize, count: parseCount, recovery: parseRecovery })
  addStatsCommand(cli, parseCount)
  cli
    .command('features')
    .description("what this kernel's ublk driver supports")
    .action(async () => {
      const f = await kernelFeatures()
      console.log(f.names.join('\n'))
    })
  return cli
}

if (require.main === module) {
  program()
    .parseAsync()
    .catch((err: unknown) => {
      const e = toUblkError(err)
      console.error(`ublk-ts: ${e.message} (${e.code})`)
      process.exitCode = 1
    })
}
