// The CLI against a real kernel: serve, list, a server killed with -9,
// and deleting the dead device it left.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'

import test from 'ava'

import { deviceGone, requireUblk } from '../helpers/kernel.ts'
import { sh } from '../helpers/shell.ts'

const cli = join(__dirname, '..', '..', 'lib', 'cli.ts')
const ublkTs = (...args: string[]) => sh(process.execPath, ['--import', 'tsx', cli, ...args])

test.before(() => requireUblk())

function serve(...args: string[]): { child: ChildProcess; path: Promise<string>; output(): string } {
  const child = spawn(process.execPath, ['--import', 'tsx', cli, 'add', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()))
  const path = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /serving (\/dev\/ublkb\d+)/.exec(out)
      if (m) resolve(m[1]!)
    })
    child.once('exit', () => reject(new Error(`exited: ${out}`)))
  })
  return { child, path, output: () => out }
}

test.serial('add serves until SIGTERM; list and info show it live', async (t) => {
  const { child, path, output } = serve('null', '--size', '64M', '--ts')
  const dev = await path
  const id = Number(dev.replace('/dev/ublkb', ''))
  const list = await ublkTs('list')
  t.regex(list.stdout, new RegExp(`${dev}\\s+live`))
  const info = JSON.parse((await ublkTs('info', String(id))).stdout)
  t.is(info.size, 64 * 2 ** 20)
  t.is(info.serverPid, child.pid)
  const exited = new Promise<number | null>((r) => child.once('exit', r))
  child.kill('SIGTERM')
  t.is(await exited, 0, output())
  t.true(deviceGone(id))
})

test.serial('a server killed with -9 leaves a dead device; delete removes it', async (t) => {
  const { child, path } = serve('null', '--size', '64M')
  const id = Number((await path).replace('/dev/ublkb', ''))
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGKILL')
  await exited
  const list = await ublkTs('list', '--json')
  const entry = (JSON.parse(list.stdout) as Array<{ id: number; state: string }>).find((d) => d.id === id)
  t.is(entry?.state, 'dead', 'the kernel keeps the device, without a server')
  const del = await ublkTs('delete', String(id))
  t.is(del.code, 0, del.stderr)
  t.true(deviceGone(id))
  const again = await ublkTs('delete', String(id))
  t.is(again.code, 1)
  t.regex(again.stderr, /no ublk device with id \d+ \(ENODEV\)/)
})
