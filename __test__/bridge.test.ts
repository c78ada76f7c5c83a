// The bridge's native entry points refuse malformed input from JavaScript
// with EINVAL; these need no kernel.
import { unlinkSync, writeFileSync } from 'node:fs'

import test from 'ava'

import binding = require('../lib/binding.js')
import { toUblkError } from '../lib/errors.ts'

const noCaps = { readOnly: false, flush: false, fua: false, discard: false, writeZeroes: false }

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

test('post refuses malformed result and request tables', (t) => {
  const b = bridge()
  try {
    const none = new Float64Array(0)
    t.is(code(() => b.post(0, Float64Array.of(1, 2), none, [], false)), 'EINVAL', 'results come in triples')
    t.is(code(() => b.post(0, none, Float64Array.of(1, 2, 3), [], false)), 'EINVAL', 'requests come in nines')
    t.is(code(() => b.post(0, Float64Array.of(0, 1, 0.5), none, [], false)), 'EINVAL', 'results are integers')
    t.is(code(() => b.post(0, Float64Array.of(70000, 1, 0), none, [], false)), 'EINVAL', 'tags fit 16 bits')
    t.is(code(() => b.post(0, none, Float64Array.of(1, 9, 0, 0, 0, 0, 0, 4096, 0), [], false)), 'EINVAL', 'unknown op')
    t.is(code(() => b.post(0, none, Float64Array.of(1, 0, 0, 0, 0, 0, -1, 4096, 0), [], false)), 'EINVAL', 'negative offset')
    t.is(code(() => b.post(0, none, Float64Array.of(1, 0, 0, 0, 0, 0, 0, 4096, 2 ** 63), [], false)), 'EINVAL', 'file offset range')
    t.is(code(() => b.post(3, none, none, [], false)), 'EINVAL', 'no such queue')
    t.is(code(() => b.post(0, none, none, [], true)), 'ok', 'an empty post is fine')
  } finally {
    b.close()
  }
})

test('createBridge validates the geometry like createDevice', (t) => {
  t.is(code(() => binding.createBridge({ target: 't', size: 0, queues: 1, depth: 4 }, noCaps, () => {})), 'EINVAL')
  t.is(code(() => binding.createBridge({ target: 't', size: 4096, depth: 0 }, noCaps, () => {})), 'EINVAL')
})

test('staging buffers are zeroed, page-sized as asked, bounded, and named by index only', (t) => {
  const b = bridge()
  try {
    const index = b.allocStaging(5000)
    const memory = new Uint8Array(b.stagingBuffer(index))
    t.is(memory.byteLength, 5000)
    t.true(memory.every((x) => x === 0))
    t.is(code(() => b.allocStaging(0)), 'EINVAL', 'empty')
    t.is(code(() => b.allocStaging(2 ** 40)), 'EINVAL', 'too large')
    t.is(code(() => b.allocStaging(1.5)), 'EINVAL', 'not whole')
    t.is(code(() => b.stagingBuffer(index + 100)), 'EBADF', 'unknown index')
    t.true(b.freeStaging(index))
    t.false(b.freeStaging(index), 'freed once')
    t.is(code(() => b.stagingBuffer(index)), 'EBADF', 'gone from the table')
    memory[0] = 1
    t.is(memory[0], 1, 'a view taken before the free keeps its memory')
    // A staging request whose buffer index is out of u32 range is refused as a whole.
    const none = new Float64Array(0)
    t.is(code(() => b.post(0, none, Float64Array.of(1, 0x400, 0, 0, -1, 0, 0, 4096, 0), [], false)), 'EINVAL')
  } finally {
    b.close()
  }
})

test('read routes are checked in native code: files open in this bridge, a power-of-two stripe, an aligned offset', async (t) => {
  const b = bridge()
  const path = `/tmp/ublk-route-${process.pid}.img`
  writeFileSync(path, Buffer.alloc(1 << 20))
  try {
    const { index } = await b.openBacking(path, false, true)
    t.is(code(() => b.setReadRoute([index], 4096, 1 << 20)), 'ok')
    t.is(code(() => b.setReadRoute([index, index], 0, 4096)), 'ok', 'a file may take several regions')
    t.is(code(() => b.setReadRoute([], 0, 4096)), 'EINVAL', 'no files')
    t.is(code(() => b.setReadRoute([index + 7], 0, 4096)), 'EBADF', 'not opened here')
    t.is(code(() => b.setReadRoute([index], 0, 3 << 12)), 'EINVAL', 'stripe not a power of two')
    t.is(code(() => b.setReadRoute([index], 0, 2048)), 'EINVAL', 'stripe below 4 KiB')
    t.is(code(() => b.setReadRoute([index], 100, 4096)), 'EINVAL', 'offset not sector aligned')
    t.is(code(() => b.setReadRoute([index], -512, 4096)), 'EINVAL', 'negative offset')
    t.is(code(() => b.setReadRoute([index], 2 ** 64, 4096)), 'EINVAL', 'offset out of range')
    t.is(code(() => b.setReadRoute(null, 0, 0)), 'ok', 'null ends routing')
    t.is(b.routedReads(), 0)
  } finally {
    b.close()
    unlinkSync(path)
  }
})
