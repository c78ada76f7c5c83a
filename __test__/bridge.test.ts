// The bridge's native entry points check what JavaScript sends; these need
// no kernel.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import binding = require('../lib/binding.js')
import { toUblkError } from '../lib/errors.ts'
import { FOR_IO, IO_FIELDS, KIND_READ, NO_BATCH, OP_READ, RESULT_FIELDS, STAGING } from '../lib/wire.ts'

const noCaps = { readOnly: false, flush: false, fua: false, discard: false, writeZeroes: false, batchHooks: false, zeroCopy: false }

function bridge() {
  return binding.createBridge({ target: 'test', size: 1 << 20, queues: 1, depth: 4 }, noCaps, () => {})
}

function code(call: () => void): string {
  try {
    call()
    return 'ok'
  } catch (err) {
    return toUblkError(err).code
  }
}

test('post refuses malformed tables as a whole, and takes malformed requests one by one', (t) => {
  const b = bridge()
  try {
    const none = new Float64Array(0)
    t.is(code(() => b.post(0, Float64Array.of(1, 2), 1, none, 0, null, false)), 'EINVAL', 'a result is three numbers')
    t.is(code(() => b.post(0, none, 0, Float64Array.of(1, 2, 3), 1, null, false)), 'EINVAL', 'a request is nine numbers')
    t.is(code(() => b.post(0, Float64Array.of(1, 2, 3), 1.5, none, 0, null, false)), 'EINVAL', 'counts are whole numbers')
    t.is(code(() => b.post(0, Float64Array.of(1, 2, 3), -1, none, 0, null, false)), 'EINVAL', 'counts are not negative')
    t.is(code(() => b.post(3, none, 0, none, 0, null, false)), 'EINVAL', 'no such queue')
    t.is(code(() => b.post(0, none, 0, none, 0, null, true)), 'ok', 'an empty post is fine')
    t.is(code(() => b.post(0, new Float64Array(64), 0, new Float64Array(64), 0, [], true)), 'ok', 'tables longer than their rows are fine')
    // Each of these is refused on its own by the queue thread, with its errno
    // to its id (a device test watches that happen): none takes the post down.
    const read = KIND_READ | FOR_IO
    const requests = [
      [1, 9, 0, 0, 0, 0, 0, 4096, 0], // unknown op
      [2, read, 0, 0, 0, 0, -1, 4096, 0], // negative buffer offset
      [3, read, 0, 0, 0, 0, 0, 4096, 2 ** 63], // file offset out of range
      [4, read, 0, 0, 0, 0, 0, 4096, Number.NaN], // not a number
      [5, KIND_READ | STAGING, 0, 0, -1, 0, 0, 4096, 0], // no such staging buffer
    ]
    t.is(code(() => b.post(0, Float64Array.of(0, 1, 0.5), 1, Float64Array.from(requests.flat()), requests.length, [], false)), 'ok')
  } finally {
    b.close()
  }
})

test('createBridge validates the geometry like createDevice', (t) => {
  t.is(code(() => binding.createBridge({ target: 't', size: 0, queues: 1, depth: 4 }, noCaps, () => {})), 'EINVAL')
  t.is(code(() => binding.createBridge({ target: 't', size: 4096, depth: 0 }, noCaps, () => {})), 'EINVAL')
})

test('staging buffers are zeroed, sized as asked, bounded, and named by handle only', (t) => {
  const b = bridge()
  const other = bridge()
  try {
    const handle = b.allocStaging(5000)
    const memory = new Uint8Array(b.stagingBuffer(handle))
    t.is(memory.byteLength, 5000)
    t.true(memory.every((x) => x === 0))
    t.is(code(() => b.allocStaging(0)), 'EINVAL', 'empty')
    t.is(code(() => b.allocStaging(2 ** 40)), 'EINVAL', 'too large')
    t.is(code(() => b.allocStaging(1.5)), 'EINVAL', 'not whole')
    t.is(code(() => b.stagingBuffer(handle + 100)), 'EBADF', 'unknown handle')
    t.is(code(() => other.stagingBuffer(handle)), 'EBADF', "another device's buffer")
    t.true(b.freeStaging(handle))
    t.false(b.freeStaging(handle), 'freed once')
    t.is(code(() => b.stagingBuffer(handle)), 'EBADF', 'gone from the table')
    memory[0] = 1
    t.is(memory[0], 1, 'a view taken before the free keeps its memory')
  } finally {
    b.close()
    other.close()
  }
})

test('read routes are checked in native code: files of this device, a power-of-two stripe, an aligned offset', async (t) => {
  const b = bridge()
  const other = bridge()
  const dir = mkdtempSync(join(tmpdir(), 'ublk-route-'))
  const path = join(dir, 'backing.img')
  writeFileSync(path, Buffer.alloc(1 << 20))
  try {
    const { handle } = await b.openBacking(path, false, true)
    const { handle: foreign } = await other.openBacking(path, false, true)
    t.is(code(() => b.setReadRoute([handle], 4096, 1 << 20)), 'ok')
    t.is(code(() => b.setReadRoute([handle, handle], 0, 4096)), 'ok', 'a file may take several regions')
    t.is(code(() => b.setReadRoute([], 0, 4096)), 'EINVAL', 'no files')
    t.is(code(() => b.setReadRoute([foreign], 0, 4096)), 'EBADF', "another device's file")
    t.is(code(() => b.setReadRoute([-1], 0, 4096)), 'EINVAL', 'not a handle')
    t.is(code(() => b.setReadRoute([handle], 0, 3 << 12)), 'EINVAL', 'stripe not a power of two')
    t.is(code(() => b.setReadRoute([handle], 0, 2048)), 'EINVAL', 'stripe below 4 KiB')
    t.is(code(() => b.setReadRoute([handle], 100, 4096)), 'EINVAL', 'offset not sector aligned')
    t.is(code(() => b.setReadRoute([handle], -512, 4096)), 'EINVAL', 'negative offset')
    t.is(code(() => b.setReadRoute([handle], 2 ** 64, 4096)), 'EINVAL', 'offset out of range')
    t.is(code(() => b.setReadRoute(null, 0, 0)), 'ok', 'null ends routing')
    t.is(b.routedReads(), 0)
    // What a worker learns of a file a route it did not set names: this device's files only.
    t.like(b.backingFile(handle), { handle, path, size: 1 << 20, readOnly: true })
    t.is(b.backingFile(foreign), null, "another device's file")
    t.is(b.backingFile(-1), null)
  } finally {
    b.close()
    other.close()
    rmSync(dir, { recursive: true })
  }
})

test("a queue's table is handed over once, then rewritten for each hand-over with the rows of its IOs", async (t) => {
  const tables: Float64Array[] = []
  let handOvers = 0
  let answered = 0
  let badRows = 0
  let withBuffers = 0
  const none = new Float64Array(0)
  const b = binding.createBridge({ target: 'test', size: 1 << 20, queues: 1, depth: 8 }, { ...noCaps, zeroCopy: true }, (queue, ios, _backend, _events, buffers, table) => {
    handOvers++
    if (table) tables.push(table)
    if (buffers !== null) withBuffers++
    const rows = tables.at(-1)!
    const results = new Float64Array(ios * RESULT_FIELDS)
    for (let i = 0; i < ios; i++) {
      const row = rows.subarray(i * IO_FIELDS, (i + 1) * IO_FIELDS)
      if (row[2] !== OP_READ || row[5] !== 4096 || row[6] !== NO_BATCH || row[0]! >= 8) badRows++
      results.set([row[0]!, row[1]!, 4096], i * RESULT_FIELDS)
    }
    answered += ios
    b.post(queue, results, ios, none, 0, null, true)
  })
  try {
    // Resolves once every read was answered: each answer named its IO by the row's tag and seq.
    t.true((await binding.runSyntheticBridge(b, 2000, 8)) > 0)
    t.is(answered, 2000)
    t.is(badRows, 0, 'every row reads as a 4 KiB read of a tag of the queue, in no write batch')
    t.true(handOvers > 1)
    t.is(tables.length, 1, 'the table came with the first hand-over only')
    t.is(withBuffers, 0, 'a zero-copy target gets no buffers, not even an array of nulls')
  } finally {
    b.close()
  }
})
