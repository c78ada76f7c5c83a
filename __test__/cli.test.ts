// The CLI's parsing and error reporting; the device paths are in device/parts/cli.ts.
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'

import test from 'ava'

import { parseSize } from '../lib/cli.ts'

const run = promisify(execFile)
const cli = join(__dirname, '..', 'lib', 'cli.js')

async function ublkTs(...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cli, ...args])
    return { code: 0, out: stdout + stderr }
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string }
    return { code: e.code, out: e.stdout + e.stderr }
  }
}

test('sizes parse in powers of 1024', (t) => {
  t.is(parseSize('4096'), 4096)
  t.is(parseSize('512K'), 512 * 1024)
  t.is(parseSize('64M'), 64 * 2 ** 20)
  t.is(parseSize('1G'), 2 ** 30)
  t.is(parseSize('2gib'), 2 * 2 ** 30)
  t.throws(() => parseSize('12x'))
  t.throws(() => parseSize('-1G'))
})

test('--help lists the commands', async (t) => {
  const r = await ublkTs('--help')
  t.is(r.code, 0)
  for (const c of ['add', 'list', 'info', 'delete', 'features']) t.regex(r.out, new RegExp(`\\b${c}\\b`))
})

test('bad input exits 1 with the errno in the message', async (t) => {
  const zero = await ublkTs('add', 'null', '--size', '0')
  t.is(zero.code, 1)
  t.regex(zero.out, /size must be greater than 0 \(EINVAL\)/)
  const unknown = await ublkTs('add', 'raid7', '--size', '1G')
  t.is(unknown.code, 1)
  t.regex(unknown.out, /unknown target "raid7".*\(EINVAL\)/)
  const loop = await ublkTs('add', 'loop', '--size', '1G')
  t.regex(loop.out, /needs --path FILE \(EINVAL\)/)
  for (const args of [['delete'], ['delete', '3', '--dead']]) {
    const r = await ublkTs(...args)
    t.is(r.code, 1)
    t.regex(r.out, /either a device id or --dead \(EINVAL\)/)
  }
  const workersWithFilter = await ublkTs('serve', join(__dirname, '..', 'examples', 'null.js'), '--size', '1M', '--workers', '--filter', 'stats')
  t.is(workersWithFilter.code, 1)
  t.regex(workersWithFilter.out, /not with --workers \(EINVAL\)/)
})

test('without a ublk driver, list says so and exits 1', async (t) => {
  if (existsSync('/dev/ublk-control')) return void t.pass('covered by the device tests')
  const r = await ublkTs('list')
  t.is(r.code, 1)
  t.regex(r.out, /modprobe ublk_drv\) \(ENOENT\)/)
})
