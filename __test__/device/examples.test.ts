// Every example in examples/ serves a working device and removes it on Ctrl-C.
import { spawn, type ChildProcess } from 'node:child_process'
import { unlinkSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { deleteDevice } from '../../lib/index.ts'

import { scratchFile } from '../helpers/files.ts'
import { deviceGone, requireUblk } from '../helpers/kernel.ts'
import { sh } from '../helpers/shell.ts'

test.before(() => requireUblk())

/** Where `scratchFile('example', ...)` puts the examples' backing file. */
const backing = `/tmp/ublk-example-${process.pid}.img`

/** Ctrl-C, as a user would; SIGKILL if that does not end it in 20 s. */
async function stopChild(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGINT')
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  const code = await exited
  clearTimeout(timer)
  return code
}

const examples: Array<[string, string[], boolean]> = [
  ['ts-null.ts', [], false],
  ['ts-ramdisk.ts', [], true],
  ['ts-loop.ts', [backing], true],
  ['rust-loop.ts', [backing], true],
]

for (const [name, args, keepsData] of examples) {
  test.serial(`examples/${name} serves a device and removes it on SIGINT`, async (t) => {
    scratchFile('example', 64 << 20)
    const child = spawn(process.execPath, [join(__dirname, '../../examples', name.replace(/\.ts$/, '.js')), ...args], {
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
  const r = await sh(process.execPath, [join(__dirname, '../../examples/raid1-demo.js')], 240_000)
  t.is(r.code, 0, r.stdout + r.stderr)
  t.is((r.stdout.match(/: OK$/gm) ?? []).length, 16, 'every checksum verified')
  t.regex(r.stdout, /recovery resync copied \d+ of 64 chunks/)
  t.regex(r.stdout, /members hold identical data: yes/)
})
