// The block devices the benchmark compares, each set up and torn down the
// same way: kernel null_blk and loop, our Rust and TypeScript targets, and
// rublk (the Rust ublk server a Rust user would pick), where installed.
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'

import { createDevice, loopTarget, nullTarget, type Device } from '../lib/index.ts'

const run = promisify(execFile)

export interface Prepared {
  path: string
  teardown(): Promise<void>
}

export interface System {
  name: string
  /** Sets the system up with `queues` hardware queues. */
  prepare(queues: number): Promise<Prepared>
  /** The queue counts it runs with, if not every one. */
  queueCounts?: number[]
}

export const DEPTH = 128
const CONFIGFS = '/sys/kernel/config'

async function mountConfigfs(): Promise<void> {
  if (!existsSync(`${CONFIGFS}/nullb`)) {
    await run('mount', ['-t', 'configfs', 'configfs', CONFIGFS])
  }
}

/** A kernel null_blk device made through configfs; `memoryBacked` keeps data. */
export async function nullBlk(name: string, queues: number, sizeMiB: number, memoryBacked: boolean): Promise<Prepared> {
  await mountConfigfs()
  const dir = `${CONFIGFS}/nullb/${name}`
  mkdirSync(dir)
  const set = (attr: string, value: string | number): void => writeFileSync(`${dir}/${attr}`, String(value))
  set('size', sizeMiB)
  set('blocksize', 512)
  set('submit_queues', queues)
  set('hw_queue_depth', DEPTH)
  set('irqmode', 0)
  set('memory_backed', memoryBacked ? 1 : 0)
  set('power', 1)
  return {
    path: `/dev/${name}`,
    async teardown() {
      set('power', 0)
      rmdirSync(dir)
    },
  }
}

export const kernelNull: System = {
  name: 'kernel null_blk',
  prepare: (queues) => nullBlk(`nbbench${queues}`, queues, 1024, false),
}

export const rustNull: System = {
  name: 'Rust null',
  async prepare(queues) {
    const dev = await createDevice({ target: 'null', size: 1 << 30, queues, depth: DEPTH })
    return { path: dev.path, teardown: () => dev.stop() }
  },
}

/** Mean IOs per hand-over of a TypeScript-served device, for the log. */
function batchNote(dev: Device, name: string): void {
  const s = dev.stats().dispatch
  if (s && s.batches) process.stderr.write(`    ${name}: ${(s.ios / s.batches).toFixed(1)} IOs per batch\n`)
}

export const tsNull: System = {
  name: 'TypeScript null',
  async prepare(queues) {
    // As a module: with several queues, each is served by a worker thread
    // of its own, which polls its queue's ring (no queue threads).
    const target = { module: require.resolve('../lib/targets/null.js') }
    const dev = await createDevice({ target, size: 1 << 30, queues, depth: DEPTH })
    return { path: dev.path, teardown: () => (batchNote(dev, 'TypeScript null'), dev.stop()) }
  },
}

/**
 * The TypeScript null module on several queues, each queue's worker fed by
 * a queue thread of its own (`queueThreads: true`) instead of polling its
 * ring: what `TypeScript null` was before workers polled their rings.
 */
export const tsNullQueueThreads: System = {
  name: 'TS null, q threads',
  queueCounts: [2],
  async prepare(queues) {
    const target = { module: require.resolve('../lib/targets/null.js') }
    const dev = await createDevice({ target, size: 1 << 30, queues, depth: DEPTH, queueThreads: true })
    return { path: dev.path, teardown: () => (batchNote(dev, 'TS null, q threads'), dev.stop()) }
  },
}

/** The TypeScript null target on one queue with no queue thread: this thread's event loop serves its ring. */
export const tsNullNoQueueThread: System = {
  name: 'TS null, no q thread',
  queueCounts: [1],
  async prepare(queues) {
    const dev = await createDevice({ target: nullTarget(), size: 1 << 30, queues, depth: DEPTH, queueThreads: false })
    return { path: dev.path, teardown: () => (batchNote(dev, 'TS null, no q thread'), dev.stop()) }
  },
}

/** Kernel loop with direct IO over `file`. */
export function kernelLoop(file: string): System {
  return {
    name: 'kernel loop (dio)',
    async prepare() {
      const { stdout } = await run('losetup', ['--direct-io=on', '--show', '-f', file])
      const path = stdout.trim()
      return {
        path,
        async teardown() {
          await run('losetup', ['-d', path])
        },
      }
    },
  }
}

export function rustLoop(file: string, size: number): System {
  return {
    name: 'Rust loop',
    async prepare(queues) {
      const dev = await createDevice({ target: 'loop', path: file, size, queues, depth: DEPTH })
      return { path: dev.path, teardown: () => dev.stop() }
    },
  }
}

export function tsLoop(file: string, size: number): System {
  return {
    name: 'TypeScript loop',
    async prepare(queues) {
      const dev = await createDevice({ target: loopTarget(file), size, queues, depth: DEPTH })
      return { path: dev.path, teardown: () => (batchNote(dev, 'TypeScript loop'), dev.stop()) }
    },
  }
}

/**
 * rublk in the foreground with a fixed device id, so its device is known
 * without parsing its output; stopped with `rublk del`.
 */
export function rublk(binary: string, kind: 'null' | 'loop', id: number, extra: string[] = []): System {
  return {
    name: `rublk ${kind}`,
    async prepare(queues) {
      const args = ['add', kind, '-n', String(id), '-q', String(queues), '-d', String(DEPTH), '--foreground', ...extra]
      const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      let stderr = ''
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
      const path = `/dev/ublkb${id}`
      const deadline = Date.now() + 20_000
      while (!existsSync(path)) {
        if (child.exitCode !== null || Date.now() > deadline) {
          child.kill('SIGKILL')
          throw new Error(`rublk ${kind} did not start: ${stderr.trim()}`)
        }
        await new Promise((r) => setTimeout(r, 50))
      }
      return {
        path,
        async teardown() {
          await run(binary, ['del', '-n', String(id)]).catch(() => undefined)
          await new Promise<void>((resolve) => {
            if (child.exitCode !== null) resolve()
            else child.once('exit', () => resolve())
          })
        },
      }
    },
  }
}

/** Whether any block device named like `prefix*` is left over. */
export function leftovers(prefix: string): string[] {
  return readdirSync('/sys/block').filter((d) => d.startsWith(prefix))
}
