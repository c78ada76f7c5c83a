// The Rust core's batch hook on a real kernel, through the journaled loop
// example (crates/ublk-core/examples/journaled_loop.rs): a Rust async target
// whose prologue makes one journal record durable per batch before the
// batch's data writes. Data verifies, every batch is journaled with its
// exact extents, and after kill -9 no byte of data lies outside an extent
// the journal announced.
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { existsSync, readFileSync, unlinkSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Readable, Writable } from 'node:stream'

import test from 'ava'

import { deleteDevice } from '../../../lib/index.ts'

import { deviceAndFileDigests, scratchFile } from '../../helpers/files.ts'
import { fio } from '../../helpers/fio.ts'
import { deviceGone, requireUblk } from '../../helpers/kernel.ts'
import { until } from '../../helpers/poll.ts'

const MiB = 1 << 20
const BINARY = join(__dirname, '..', '..', '..', 'target', 'debug', 'examples', 'journaled_loop')

test.before(() => requireUblk())

/** The example's binary; its absence fails only the tests that need it, not the file that imports them. */
function requireBinary(): void {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`cargo build -p ublk-core --example journaled_loop\``)
}

type Server = ChildProcessByStdio<Writable, Readable, null>

async function serve(data: string, journal: string, ioDelayUs: number): Promise<{ child: Server; id: number; path: string }> {
  requireBinary()
  const child = spawn(BINARY, [data, journal, '--io-delay-us', String(ioDelayUs), '--depth', '64'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout })
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve)
    child.once('exit', (code) => reject(new Error(`journaled_loop exited with ${code}`)))
  })
  lines.close()
  const path = (JSON.parse(first) as { device: string }).device
  return { child, path, id: Number(/(\d+)$/.exec(path)![1]) }
}

interface Journal {
  begun: Map<string, Array<[number, number]>>
  ended: Set<string>
}

function readJournal(file: string): Journal {
  const journal: Journal = { begun: new Map(), ended: new Set() }
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [kind, batch, ...extents] = line.split(' ')
    if (kind === 'B') journal.begun.set(batch!, extents.map((e) => e.split('+').map(Number) as [number, number]))
    else if (kind === 'E') journal.ended.add(batch!)
  }
  return journal
}

test.serial('Rust batch hook: fio verify through the journaled loop; one durable record per batch, with its exact writes', async (t) => {
  const data = scratchFile('journaled-data', 32 * MiB)
  const journalFile = scratchFile('journaled-log', 0)
  const { child, path, id } = await serve(data, journalFile, 200)
  let stats = { writes: 0, batches: 0, epilogues: 0 }
  try {
    for (const job of [
      { rw: 'randwrite', bs: '4k', iodepth: 32, size: '8M' },
      { rw: 'write', bs: '128k', iodepth: 8, size: '16M' },
    ] as const) {
      const r = await fio(path, { ...job, verify: 'crc32c' })
      t.is(r.errors, 0, `${job.rw} ${job.bs}`)
      t.true(r.writeIos > 0 && r.readIos > 0)
    }
    const [fromDevice, fromFile] = await deviceAndFileDigests(path, data)
    t.is(fromDevice, fromFile, 'the data file holds what went through the device')
  } finally {
    const out = createInterface({ input: child.stdout })
    const last = new Promise<string>((resolve) => out.on('line', resolve))
    child.stdin.end()
    await new Promise((resolve) => child.once('exit', resolve))
    stats = JSON.parse(await last) as typeof stats
  }
  t.true(deviceGone(id), 'closing stdin stops and deletes the device')

  const journal = readJournal(journalFile)
  const journaledWrites = [...journal.begun.values()].reduce((n, extents) => n + extents.length, 0)
  t.true(stats.writes > 0)
  t.is(journal.begun.size, stats.batches, 'one journal record per batch')
  t.is(journaledWrites, stats.writes, 'every write was in exactly one batch record')
  t.true(stats.batches < stats.writes, `${stats.writes} writes in ${stats.batches} batches: the prologue is shared`)
  t.is(stats.epilogues, stats.batches)
  t.deepEqual([...journal.begun.keys()].filter((b) => !journal.ended.has(b)), [], 'every batch that began ended')
  for (const f of [data, journalFile]) unlinkSync(f)
})

test.serial('Rust batch hook: after kill -9, every written block lies inside a journaled extent', async (t) => {
  const data = scratchFile('journaled-crash', 32 * MiB)
  const journalFile = scratchFile('journaled-crash-log', 0)
  const { child, path, id } = await serve(data, journalFile, 500)
  const writer = fio(path, { rw: 'randwrite', bs: '4k', iodepth: 32, size: '32M', runtime: 30 }).catch(() => undefined)
  const journaled = () => [...readJournal(journalFile).begun.values()].reduce((n, extents) => n + extents.length, 0)
  await until(() => journaled() >= 300, 'three hundred writes have been journaled')
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('exit', resolve))
  await writer
  await deleteDevice(id)

  const journal = readJournal(journalFile)
  const covered = new Set<number>()
  for (const extents of journal.begun.values()) {
    for (const [offset, len] of extents) for (let b = offset; b < offset + len; b += 4096) covered.add(b / 4096)
  }
  const bytes = readFileSync(data)
  const written: number[] = []
  for (let block = 0; block < bytes.length / 4096; block++) {
    const view = bytes.subarray(block * 4096, (block + 1) * 4096)
    if (view.some((byte) => byte !== 0)) written.push(block)
  }
  t.true(written.length > 100, `${written.length} blocks written before the kill`)
  t.deepEqual(written.filter((b) => !covered.has(b)), [], 'no data outside a journaled extent')
  const open = [...journal.begun.keys()].filter((b) => !journal.ended.has(b))
  t.log(`${written.length} blocks written, ${journal.begun.size} batches journaled, ${open.length} open at the kill`)
  for (const f of [data, journalFile]) unlinkSync(f)
})
