// The CLI against a real kernel: serve, list, a server killed with -9,
// and deleting the dead device it left (and only it) with `delete --dead`.
import { existsSync, unlinkSync } from 'node:fs'

import test from 'ava'

import { createDevice } from '../../../lib/index.ts'

import { serve as serveCommand, ublkTs } from '../../helpers/cli.ts'
import { scratchFile } from '../../helpers/files.ts'
import { deviceGone } from '../../helpers/kernel.ts'
import { DATA_OFFSET, digestRange } from '../../helpers/raid1.ts'
import { sh } from '../../helpers/shell.ts'

const serve = (...args: string[]) => serveCommand(...(args[0] === 'raid1' ? args : ['add', ...args]))

test.serial('add serves until SIGTERM; list and info show it live; a second signal while it stops does not kill it', async (t) => {
  const { child, path, exited, output } = serve('null', '--size', '64M', '--ts')
  const dev = await path
  const id = Number(dev.replace('/dev/ublkb', ''))
  const list = await ublkTs('list')
  t.regex(list.stdout, new RegExp(`${dev}\\s+live`))
  const info = JSON.parse((await ublkTs('info', String(id))).stdout)
  t.is(info.size, 64 * 2 ** 20)
  t.is(info.serverPid, child.pid)
  // An impatient second Ctrl-C: the stop it interrupts would leave the
  // device behind with no server.
  child.kill('SIGTERM')
  child.kill('SIGINT')
  t.is(await exited, 0, output())
  t.regex(output(), /SIG(INT|TERM) while it stops; still stopping/)
  t.regex(output(), new RegExp(`${dev} removed`))
  t.true(deviceGone(id))
})

test.serial('a SIGTERM sent the moment the serving line appears stops the device cleanly: the line is printed once signals are handled', async (t) => {
  const { child, path, exited, output } = serve('null', '--size', '16M', '--ts')
  const dev = await path
  child.kill('SIGTERM')
  t.is(await exited, 0, output())
  t.regex(output(), new RegExp(`SIGTERM: stopping ${dev}`))
  t.regex(output(), new RegExp(`${dev} removed`))
  t.true(deviceGone(Number(dev.replace('/dev/ublkb', ''))))
})

test.serial('a server killed with -9 leaves a dead device, listed as such; delete --dead removes it and only it', async (t) => {
  const { child, path } = serve('null', '--size', '64M')
  const id = Number((await path).replace('/dev/ublkb', ''))
  const exited = new Promise((r) => child.once('exit', r))
  child.kill('SIGKILL')
  await exited
  // The kernel marks the device dead on its own time after the server died: poll.
  const failures: string[] = []
  let state: string | undefined
  for (const deadline = Date.now() + 60_000; state !== 'dead' && Date.now() < deadline; ) {
    const list = await ublkTs('list', '--json')
    if (list.code !== 0) failures.push(`list exited ${list.code}: ${list.stderr}`)
    else state = (JSON.parse(list.stdout) as Array<{ id: number; state: string }>).find((d) => d.id === id)?.state
  }
  t.is(state, 'dead', `the kernel keeps the device, without a server${failures.length ? `; ${failures.join('; ')}` : ''}`)
  t.deepEqual(failures, [], 'list never failed')
  const listed = await ublkTs('list')
  t.regex(listed.stdout, new RegExp(`/dev/ublkb${id} .*server gone`))
  // A device whose server runs (this process) is left alone by --dead.
  const live = await createDevice({ target: 'null', size: 16 << 20 })
  try {
    const del = await ublkTs('delete', '--dead')
    t.is(del.code, 0, del.stderr)
    t.is(del.stdout.trim(), `deleted /dev/ublkb${id}`)
    t.true(deviceGone(id))
    t.true(existsSync(live.path) && !live.stopped, 'the served device is still there')
  } finally {
    await live.stop()
  }
  const again = await ublkTs('delete', String(id))
  t.is(again.code, 1)
  t.regex(again.stderr, /no ublk device with id \d+ \(ENODEV\)/)
})

test.serial('raid1: create with --offload-writes, status, fail, add with --watch, stop from another process', async (t) => {
  const members = [0, 1].map((i) => scratchFile(`cli-raid1-${i}`, 24 << 20))
  const server = serve('raid1', 'create', ...members, '--chunk', '64k', '--offload-writes')
  const path = await server.path
  const id = path.replace('/dev/ublkb', '')
  const status = async () => JSON.parse((await ublkTs('raid1', 'status', id, '--json')).stdout) as { state: string; offloadWrites: boolean; members: Array<{ state: string }> }
  const first = await status()
  t.is(first.state, 'optimal')
  t.true(first.offloadWrites)
  const write = await sh('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', 'count=8', 'oflag=direct', 'conv=nocreat'])
  t.is(write.code, 0, write.stderr)
  const failed = await ublkTs('raid1', 'fail', id, '1')
  t.is(failed.code, 0, failed.stderr)
  t.is((await status()).state, 'degraded')
  t.is((await ublkTs('raid1', 'fail', id, '0')).code, 1, 'the last member in sync cannot be failed')
  await sh('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', 'count=4', 'seek=2', 'oflag=direct', 'conv=nocreat'])
  t.is((await ublkTs('raid1', 'add', id, members[1]!)).code, 0)
  const watched = await ublkTs('raid1', 'status', id, '--watch')
  t.is(watched.code, 0, watched.stderr)
  t.regex(watched.stdout, /optimal/)
  t.regex(watched.stdout, /member writes run on io_uring's worker threads/)
  t.is((await status()).members[1]?.state, 'active')
  t.is((await ublkTs('raid1', 'stop', id)).code, 0)
  t.is(await server.exited, 0, server.output())
  t.regex(server.output(), /stopped cleanly/)
  t.true(deviceGone(Number(id)))
  t.is(digestRange(members[0]!, DATA_OFFSET, 23 << 20), digestRange(members[1]!, DATA_OFFSET, 23 << 20))
  t.is((await ublkTs('raid1', 'status', id)).code, 1, 'no array any more')
  for (const m of members) unlinkSync(m)
})
