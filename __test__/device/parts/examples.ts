// Every example in examples/ serves a working device and removes it on Ctrl-C.
import { spawn, type ChildProcess } from 'node:child_process'
import { unlinkSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { deleteDevice } from '../../../lib/index.ts'

import { scratchFile } from '../../helpers/files.ts'
import { fio } from '../../helpers/fio.ts'
import { deviceGone, queueThreadNames } from '../../helpers/kernel.ts'
import { sh } from '../../helpers/shell.ts'

/** Where `scratchFile('example', ...)` puts the examples' backing file. */
const backing = `/tmp/ublk-example-${process.pid}.img`

/** Ctrl-C, as a user would; SIGKILL if that does not end it in 20 s. Resolves once its output is all in. */
async function stopChild(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)))
  child.kill('SIGINT')
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  const code = await exited
  clearTimeout(timer)
  return code
}

const cli = join(__dirname, '../../../lib/cli.js')
const example = (name: string): string => join(__dirname, '../../../examples', name)

/** What each example runs, and whether what is written reads back. */
const examples: Array<{
  name: string
  args: () => string[]
  keepsData: boolean
  fio?: boolean
  stats?: boolean
  says?: RegExp
  /** How many queue threads (`ublkN-qM`) the server runs. */
  queueThreads?: number
}> = [
  { name: 'ublk-ts serve examples/null.js', args: () => [cli, 'serve', example('null.js'), '--size', '64M'], keepsData: false },
  {
    // TypeScript loaded directly, with a filter from the command line.
    name: 'ublk-ts serve examples/ramdisk.ts --filter stats',
    args: () => [cli, 'serve', example('ramdisk.ts'), '--size', '64M', '--filter', 'stats'],
    keepsData: true,
    fio: true,
    stats: true,
  },
  {
    // Two queues, each served by a worker thread with its own instance.
    name: 'ublk-ts serve examples/loop.js --queues 2 --workers -- --file FILE',
    args: () => [cli, 'serve', example('loop.js'), '--size', '64M', '--queues', '2', '--workers', '--', '--file', backing],
    keepsData: true,
    says: /\(loop-example, a worker per queue, /,
    queueThreads: 0,
  },
  {
    name: 'ublk-ts serve examples/loop.js --queues 2 --workers --queue-threads -- --file FILE',
    args: () => [cli, 'serve', example('loop.js'), '--size', '64M', '--queues', '2', '--workers', '--queue-threads', '--', '--file', backing],
    keepsData: true,
    queueThreads: 2,
  },
  { name: 'examples/rust-loop.js FILE', args: () => [example('rust-loop.js'), backing], keepsData: true },
]

for (const { name, args, keepsData, fio: verify, stats, says, queueThreads } of examples) {
  test.serial(`${name} serves a device${verify ? ' that fio verifies' : ''} and removes it on SIGINT`, async (t) => {
    scratchFile('example', 64 << 20)
    const child = spawn(process.execPath, args(), {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let path: string | undefined
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    try {
      path = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no device after 60 s: ${out}`)), 60_000)
        child.stdout.on('data', () => {
          const m = /serving (\/dev\/ublkb\d+)/.exec(out)
          if (m) {
            clearTimeout(timer)
            resolve(m[1]!)
          }
        })
        child.once('exit', () => reject(new Error(`exited early: ${out}`)))
      })
      if (queueThreads !== undefined) {
        const threads = queueThreadNames(undefined, child.pid!)
        t.is(threads.length, queueThreads, `queue threads: ${threads.join(', ')}`)
      }
      if (verify) {
        const r = await fio(path, { rw: 'randwrite', bs: '4k', iodepth: 16, size: '8M', verify: 'crc32c' })
        t.is(r.errors, 0)
      }
      const script = [
        'set -e',
        'head -c 1048576 /dev/urandom > /tmp/ex.bin',
        `test -b ${path}`,
        `dd if=/tmp/ex.bin of=${path} bs=64k oflag=direct conv=nocreat status=none`,
        `dd if=${path} bs=64k count=16 iflag=direct status=none | cmp -s - /tmp/ex.bin && echo same || echo differs`,
      ].join('\n')
      const r = await sh('sh', ['-c', script])
      t.is(r.code, 0, r.stderr)
      t.is(r.stdout.trim(), keepsData ? 'same' : 'differs')
      t.is(await stopChild(child), 0, out)
      t.regex(out, /removed/)
      if (stats) t.regex(out, /stats at stop: write: \d+ IOs/)
      if (says) t.regex(out, says)
      t.true(deviceGone(Number(path.replace('/dev/ublkb', ''))))
    } finally {
      if (child.exitCode === null && (await stopChild(child)) !== 0 && path) {
        // A server that had to be killed leaves its device: remove it.
        await deleteDevice(Number(path.replace('/dev/ublkb', ''))).catch(() => undefined)
      }
      unlinkSync(backing)
    }
  })
}

test.serial('examples/raid1-demo.ts (the README demo) verifies every file and ends with identical members', async (t) => {
  const r = await sh(process.execPath, [join(__dirname, '../../../examples/raid1-demo.js')], 240_000)
  t.is(r.code, 0, r.stdout + r.stderr)
  t.is((r.stdout.match(/: OK$/gm) ?? []).length, 16, 'every checksum verified')
  t.regex(r.stdout, /recovery resync copied \d+ of 64 chunks/)
  t.regex(r.stdout, /members hold identical data: yes/)
})
