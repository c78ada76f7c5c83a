// `ublk-ts serve FILE`: a user's target module served as a device in the
// foreground, with filters stacked over it; and the serving loop every
// serving command shares.
import type { Command } from 'commander'

import { createDevice, type Device, type Recovery } from './device.js'
import { UblkError } from './errors.js'
import type { Filter } from './filters/index.js'
import { handOverOrExit, untilStopOrHandOver } from './handover.js'
import { metricsPortOption, serveMetrics } from './metrics/cli.js'
import { loadTarget, parseTargetArgs } from './target-module.js'
import type { Target } from './target.js'

/** Serves `dev` until Ctrl-C, SIGTERM, a hand-over or its deletion elsewhere, then stops it. */
export async function serveUntilSignal(dev: Device, what: string): Promise<void> {
  const info = await dev.info()
  const path = info.zeroCopy ? 'zero copy' : info.batchIo ? 'copy path, batch IO' : 'copy path'
  const recovery = info.recovery === 'none' ? '' : `, recovery ${info.recovery}`
  // Listening before saying so: whoever reads the line may signal at once.
  const ending = untilStopOrHandOver(dev)
  console.log(`serving ${dev.path} (${what}, ${path}${recovery}); Ctrl-C or SIGTERM to stop`)
  const { how, signal, release } = await ending
  try {
    if (how === 'hand-over') return await handOverOrExit(dev, console.log)
    if (signal) console.log(`${signal}: stopping ${dev.path}`)
    await dev.stop()
    console.log(how === 'gone' ? `${dev.path} was deleted by another process; nothing left to serve` : `${dev.path} removed`)
  } finally {
    release()
  }
}

type FiltersModule = typeof import('./filters/index.js')

/**
 * The filters, loaded only for a command line that names one: their
 * modules are a tenth of a serving command's start-up, and a standby or a
 * plain `add` has none.
 */
function filtersModule(): FiltersModule {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use, see above
  return require('./filters/index.js') as FiltersModule
}

/** Collects repeated `--filter` options, each checked as it is read. */
export function collectFilter(text: string, earlier: Filter[] = []): Filter[] {
  return [...earlier, filtersModule().parseFilter(text)]
}

/** `target` under `filters`, the first outermost. */
export function stackFilters(target: Target, filters: readonly Filter[]): Target {
  return filters.length === 0 ? target : filtersModule().withFilters(target, filters)
}

interface ServeOptions {
  size: number
  queues: number
  depth: number
  blockSize: number
  id?: number
  filter: Filter[]
  zeroCopy: boolean
  recovery: Recovery
  ioTimeout?: number
  metrics?: number
  workers: boolean
  /** Unset unless --queue-threads or --no-queue-threads was given. */
  queueThreads?: boolean
}

interface Parsers {
  size: (text: string) => number
  count: (text: string) => number
  recovery: (text: string) => Recovery
}

async function serveModule(file: string, words: string[], opts: ServeOptions): Promise<void> {
  if (opts.recovery !== 'none') refuseProcessBoundFilters(opts.filter, 'with --recovery')
  if (opts.workers && opts.filter.length > 0) throw new UblkError('EINVAL', 'filters stack over a target in this thread: not with --workers')
  const geometry = { size: opts.size, queues: opts.queues, depth: opts.depth, logicalBlockSize: opts.blockSize }
  // With --workers each queue's worker loads the module itself; without,
  // one instance in this thread serves every queue.
  const target = opts.workers
    ? { module: file, args: parseTargetArgs(words) }
    : stackFilters(await loadTarget(file, parseTargetArgs(words), geometry), opts.filter)
  const devices: Device[] = []
  const metrics = await serveMetrics(opts.metrics, devices)
  const dev = await createDevice({
    ...geometry,
    target,
    zeroCopy: opts.zeroCopy,
    recovery: opts.recovery,
    workers: opts.workers,
    ...(opts.queueThreads !== undefined ? { queueThreads: opts.queueThreads } : {}),
    ...(opts.id !== undefined ? { id: opts.id } : {}),
    ...(opts.ioTimeout !== undefined ? { ioTimeoutMs: opts.ioTimeout } : {}),
  })
  devices.push(dev)
  const name = 'module' in target ? `${dev.target}, a worker per queue` : (target.name ?? file)
  await serveUntilSignal(dev, name)
  await metrics?.close()
  // The module may hold timers or sockets of its own: the device is gone,
  // so is the process (once what it printed is out).
  process.stdout.write('', () => process.exit())
}

export function addServeCommand(cli: Command, parse: Parsers): void {
  cli
    .command('serve')
    .description("serve a target module (a .ts or .js file whose default export is a Target, or a function or class making one) until Ctrl-C")
    .argument('<file>', 'the target module')
    .argument('[target-options...]', "after --: the module's own options (--key value, --flag), given to its factory")
    .requiredOption('-s, --size <bytes>', 'capacity, e.g. 64M', parse.size)
    .option('-q, --queues <n>', 'hardware queues', parse.count, 1)
    .option('-d, --depth <n>', 'IOs in flight per queue', parse.count, 128)
    .option('-b, --block-size <bytes>', 'logical block size', parse.count, 512)
    .option('--id <n>', 'device id to ask for', parse.count)
    .option('-f, --filter <name[:key=value,...]>', 'stack a filter over the target (repeatable; the first is outermost)', collectFilter, [])
    .option('--io-timeout <ms>', 'fail an IO the target has not answered after this long (0: never)', parse.count)
    .option('--no-zero-copy', 'copy IO data through user space even where the kernel has zero copy')
    .option('--recovery <mode>', 'when this process dies: none or reissue', parse.recovery, 'none')
    .option('--workers', "serve each queue in a worker thread with its own instance of the module (for targets whose instances share no state in memory)", false)
    .option('--queue-threads', 'give every queue a thread that hands its IOs to JavaScript (default: only a queue served on the main thread has one; a worker polls its queue itself)')
    .option('--no-queue-threads', "no queue threads: the JavaScript thread that serves a queue polls its ring (one queue on the main thread, or --workers)")
    .addOption(metricsPortOption())
    .action(serveModule)
}

/** For commands whose --filter makes sense only over a TypeScript target. */
export function refuseFiltersWithout(filters: readonly Filter[], ts: boolean | undefined): void {
  if (filters.length > 0 && !ts) throw new UblkError('EINVAL', 'filters stack over TypeScript targets: add --ts')
}

/**
 * Filters whose state lives in this process only (cow's record of written
 * sectors) cannot be on a device another process takes over: the data
 * written through them would be lost.
 */
export function refuseProcessBoundFilters(filters: readonly Filter[], why: string): void {
  const bound = filters.find((f) => f.name === 'cow')
  if (bound) throw new UblkError('EINVAL', `the ${bound.name} filter cannot be used ${why}: what it knows lives in this process only`)
}
