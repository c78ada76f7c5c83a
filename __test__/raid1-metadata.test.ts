// RAID1 metadata without a kernel: the superblock's encoding and checks,
// and the write-intent bitmap's group commit and lazy clearing.
import test from 'ava'

import { WriteIntentBitmap } from '../lib/raid1/bitmap.ts'
import { decodeSuperblock, encodeSuperblock, layoutFor, newSuperblock } from '../lib/raid1/superblock.ts'
import { UblkError } from '../lib/index.ts'

test('a superblock round-trips; damage and strangers are told apart', (t) => {
  const sb = { ...newSuperblock(64 << 20, 65536, 2, true), slot: 1, events: 42, clean: false }
  sb.slots[1] = 'faulty'
  const bytes = new Uint8Array(4096)
  encodeSuperblock(sb, bytes)
  t.deepEqual(decodeSuperblock(bytes, 'm'), sb)
  const damaged = bytes.slice()
  damaged[70] = damaged[70]! ^ 1
  t.is(t.throws(() => decodeSuperblock(damaged, 'm'), { instanceOf: UblkError })?.code, 'EBADMSG')
  t.is(t.throws(() => decodeSuperblock(new Uint8Array(4096), 'm'), { instanceOf: UblkError })?.code, 'EINVAL')
  t.deepEqual(layoutFor(64 << 20, 65536), { chunks: 1024, bitmapBytes: 4096, dataOffset: 1 << 20 })
})

function bitmapWithStore() {
  const persists: Array<{ from: number; to: number; release(): void }> = []
  const bitmap = new WriteIntentBitmap(1024, 65536, new Uint8Array(4096), {
    persist: (from, to) => new Promise<void>((release) => persists.push({ from, to, release })),
  })
  return { bitmap, persists }
}

test('marks wait for the flush that carries them; batches arriving meanwhile share the next one', async (t) => {
  const { bitmap, persists } = bitmapWithStore()
  let firstDone = false
  const first = bitmap.mark([{ offset: 0, length: 4096 }])!.then(() => (firstDone = true))
  t.is(persists.length, 1, 'the first mark starts a flush')
  const second = bitmap.mark([{ offset: 65536, length: 4096 }])!
  const third = bitmap.mark([{ offset: 3 * 65536, length: 65536 * 2 }])!
  t.is(persists.length, 1, 'one flush at a time')
  persists[0]!.release()
  await first
  t.true(firstDone)
  await new Promise((r) => setImmediate(r))
  t.is(persists.length, 2, 'the two later batches share one flush')
  persists[1]!.release()
  await Promise.all([second, third])
  t.is(bitmap.dirtyCount, 4)
  t.is(bitmap.mark([{ offset: 0, length: 512 }]), undefined, 'a bit already on disk needs no flush')
  t.deepEqual(bitmap.dirtyChunks(), [0, 1, 3, 4])
})

test('bits clear only after two idle sweeps, never while kept or written', async (t) => {
  const { bitmap, persists } = bitmapWithStore()
  const extents = [{ offset: 0, length: 4096 }]
  const marked = bitmap.mark(extents)!
  persists[0]!.release()
  await marked
  bitmap.sweep()
  bitmap.sweep()
  t.is(bitmap.dirtyCount, 1, 'a write in flight keeps its bit')
  bitmap.unmark(extents)
  bitmap.sweep()
  t.is(bitmap.dirtyCount, 1, 'one idle period is not enough')
  let keep = true
  bitmap.keepBits = () => keep
  bitmap.sweep()
  bitmap.sweep()
  t.is(bitmap.dirtyCount, 1, 'kept while degraded')
  keep = false
  bitmap.sweep()
  t.is(bitmap.dirtyCount, 0)
  t.is(persists.length, 2, 'the clear is written')
  t.is(bitmap.isSet(0), false)
})

test('chunks marked ahead are durable with the write that marked them, count no write, and clear like any other once idle', async (t) => {
  const { bitmap, persists } = bitmapWithStore()
  const extents = [{ offset: 0, length: 65536 }]
  const marked = bitmap.mark(extents, [1, 3])!
  t.is(persists.length, 1, 'one flush carries the write and the chunks ahead')
  let done = false
  void marked.then(() => (done = true))
  await new Promise((r) => setImmediate(r))
  t.false(done, 'not before that flush')
  persists[0]!.release()
  await marked
  t.deepEqual(bitmap.dirtyChunks(), [0, 1, 2, 3])
  t.is(bitmap.mark([{ offset: 2 * 65536, length: 4096 }]), undefined, 'a chunk marked ahead needs no flush of its own')
  t.is(bitmap.whenIdle(3), undefined, 'no write counted in a chunk only marked ahead')
  const late = bitmap.mark([{ offset: 5 * 65536, length: 4096 }], [6, 6])!
  t.is(persists.length, 2)
  persists[1]!.release()
  await late
  t.true(bitmap.isSet(6), 'a chunk ahead new to this flush waits for it too')
  bitmap.unmark(extents)
  bitmap.unmark([{ offset: 2 * 65536, length: 4096 }])
  bitmap.unmark([{ offset: 5 * 65536, length: 4096 }])
  bitmap.sweep()
  bitmap.sweep()
  t.is(bitmap.dirtyCount, 0, 'two idle sweeps clear them all')
  void bitmap.mark([{ offset: 1023 * 65536, length: 4096 }], [1024, 1030])
  t.deepEqual(bitmap.dirtyChunks(), [1023], 'a range past the last chunk marks nothing past it')
})
