// The dispatcher's side of IOs handed over to the queue thread (passthrough
// and mirror), driven through its batch handler with a stand-in for the
// native bridge that records what would be posted to the queue thread.
import test from 'ava'

import { Dispatcher } from '../lib/dispatch/index.ts'
import { Handles } from '../lib/handles.ts'
import type { BackingFile, FailedTransfer, Target } from '../lib/index.ts'
import { COMPLETES_IO, FOR_IO, IO_FIELDS, KIND_READ, KIND_WRITE, NO_BATCH, OP_READ, OP_WRITE, REPORT_FAILURE, REQUEST_FIELDS, RESULT_FIELDS } from '../lib/wire.ts'

import type { NativeBridge } from '../index.js'

const EIO = 5
const LENGTH = 4096

interface Request {
  id: number
  kind: number
  file: number
  tag: number
  seq: number
  length: number
  fileOffset: number
}

/** A dispatcher for `target` over one queue, two files (handles 1 and 2), and what it posts. */
function harness(target: Target) {
  const handles = new Handles()
  const opened = { size: 1 << 20, direct: false, readOnly: false, blockDevice: false }
  const a = handles.file('/a', { handle: 1, ...opened })
  const b = handles.file('/b', { handle: 2, ...opened })
  const results: Array<[number, number, number]> = []
  const requests: Request[] = []
  const bridge = {
    post(_queue: number, res: Float64Array, resultCount: number, req: Float64Array, requestCount: number) {
      for (let i = 0; i < resultCount * RESULT_FIELDS; i += RESULT_FIELDS) results.push([res[i]!, res[i + 1]!, res[i + 2]!])
      for (let i = 0; i < requestCount * REQUEST_FIELDS; i += REQUEST_FIELDS) {
        const [id, kind, , file, tag, seq, , length, fileOffset] = req.subarray(i, i + REQUEST_FIELDS)
        requests.push({ id: id!, kind: kind!, file: file!, tag: tag!, seq: seq!, length: length!, fileOffset: fileOffset! })
      }
    },
  } as unknown as NativeBridge
  const dispatcher = new Dispatcher(target, { queues: 1, depth: 4, ioTimeoutMs: 0, handles })
  dispatcher.attach(bridge)
  const table = new Float64Array(256)
  let handed = false
  /** Hands IO `tag`/`seq` to the target, with the backend answers `[id, result]` before it. */
  const batch = (ios: Array<[tag: number, seq: number, op: number]>, answers: Array<[number, number]> = []) => {
    // Like the native side: one table, rewritten for each hand-over, given once.
    table.fill(Number.NaN)
    ios.forEach(([tag, seq, op], i) => table.set([tag, seq, op, 0, 8192, LENGTH, NO_BATCH, 0, 0], i * IO_FIELDS))
    table.set(answers.flat(), ios.length * IO_FIELDS)
    dispatcher.onBatch(0, ios.length, answers.length, 0, null, handed ? null : table)
    handed = true
  }
  return { dispatcher, a, b, results, requests, batch }
}

/** Lets the microtasks (the outbox's post) and the handlers' promises run. */
const settle = () => new Promise((resolve) => setImmediate(resolve))

test('a mirrored write: one completing write per file, each reporting; all landed, the queue thread completed it', async (t) => {
  let calls = 0
  const h = harness({ read() {}, write: (io) => io.mirror([h.a, h.b], 1 << 20, () => void calls++) })
  h.batch([[0, 7, OP_WRITE]])
  await settle()
  const kind = KIND_WRITE | COMPLETES_IO | FOR_IO | REPORT_FAILURE
  t.deepEqual(
    h.requests.map(({ kind, file, tag, seq, length, fileOffset }) => ({ kind, file, tag, seq, length, fileOffset })),
    [1, 2].map((file) => ({ kind, file, tag: 0, seq: 7, length: LENGTH, fileOffset: 1 << 20 })),
  )
  t.not(h.requests[0]!.id, 0)
  t.not(h.requests[0]!.id, h.requests[1]!.id)
  t.deepEqual(h.results, [], 'the queue thread answers the IO')
  h.batch([], [[h.requests[0]!.id, LENGTH], [h.requests[1]!.id, LENGTH]])
  h.dispatcher.shutdown()
  await settle()
  t.is(calls, 0, 'a write whose copies all landed is not reported failed, not even by the stop')
  t.deepEqual(h.results, [])
})

test('a mirrored write with a failed copy: the handler gets the failures once every copy is done, and answers the IO', async (t) => {
  const seen: Array<readonly FailedTransfer[]> = []
  const h = harness({ read() {}, write: (io) => io.mirror([h.a, h.b], 0, (failures) => void seen.push(failures)) })
  h.batch([[1, 3, OP_WRITE]])
  await settle()
  const [a1, b1] = h.requests.map((r) => r.id)
  h.batch([], [[a1!, LENGTH], [b1!, -EIO]])
  await settle()
  t.is(seen.length, 1)
  t.deepEqual(
    seen[0]!.map((f) => [f.file.path, (f.error as { code?: string }).code]),
    [['/b', 'EIO']],
  )
  t.deepEqual(h.results, [[1, 3, LENGTH]], 'the handler resolved: the IO succeeds')
  const throwing = harness({
    read() {},
    write: (io) =>
      io.mirror([throwing.a, throwing.b], 0, () => {
        throw Object.assign(new Error('no member in sync took it'), { code: 'EIO' })
      }),
  })
  throwing.batch([[2, 4, OP_WRITE]])
  await settle()
  const [x, y] = throwing.requests.map((r) => r.id)
  throwing.batch([], [[x!, -EIO], [y!, -EIO]])
  await settle()
  t.deepEqual(throwing.results, [[2, 4, -EIO]], 'the handler threw: the IO fails with its errno')
})

test('a mirrored write still in flight when the device stops: the handler learns its copies were cancelled; nothing is posted after the stop', async (t) => {
  const seen: string[] = []
  const h = harness({ read() {}, write: (io) => io.mirror([h.a, h.b], 0, (failures) => void seen.push(...failures.map((f) => (f.error as { code?: string }).code!))) })
  h.batch([[0, 1, OP_WRITE]])
  await settle()
  h.dispatcher.shutdown()
  await settle()
  t.deepEqual(seen, ['ECANCELED', 'ECANCELED'])
  t.deepEqual(h.results, [])
})

test('a passthrough read that fails goes to onReadError, whose outcome answers the IO', async (t) => {
  const errors: string[] = []
  const h = harness({
    read: (io) =>
      io.passthrough(h.a, 0, async (err) => {
        errors.push((err as { code?: string }).code!)
        await Promise.resolve()
      }),
    write() {},
  })
  h.batch([[3, 9, OP_READ]])
  await settle()
  t.is(h.requests[0]!.kind, KIND_READ | COMPLETES_IO | FOR_IO | REPORT_FAILURE)
  h.batch([], [[h.requests[0]!.id, -EIO]])
  await settle()
  t.deepEqual(errors, ['EIO'])
  t.deepEqual(h.results, [[3, 9, LENGTH]])
})

test('mirror refuses: a read, no files, more than 64, a file of another device, a second hand-over; nothing is sent', async (t) => {
  const foreign: BackingFile = { path: '/x', size: 1 << 20, direct: false, readOnly: false, blockDevice: false }
  const codes: string[] = []
  const attempt = (f: () => void) => {
    try {
      f()
      codes.push('ok')
    } catch (err) {
      codes.push((err as { code?: string }).code ?? String(err))
    }
  }
  const h = harness({
    read: (io) => io.mirror([h.a], 0),
    write: (io) => {
      attempt(() => io.mirror([], 0))
      attempt(() => io.mirror(Array.from({ length: 65 }, () => h.a), 0))
      attempt(() => io.mirror([h.a, foreign], 0))
      attempt(() => io.mirror([h.a, h.b], 0))
      attempt(() => io.mirror([h.a], 0))
    },
  })
  h.batch([[0, 1, OP_READ], [1, 1, OP_WRITE]])
  await settle()
  t.deepEqual(codes, ['EINVAL', 'EINVAL', 'EBADF', 'ok', 'EINVAL'])
  t.deepEqual(
    h.requests.map((r) => [r.tag, r.id, r.kind]),
    [1, 2].map(() => [1, 0, KIND_WRITE | COMPLETES_IO | FOR_IO]),
    'only the one mirror made, without reports: no handler',
  )
  t.deepEqual(h.results, [[0, 1, -22]], 'the refused read fails with EINVAL')
})
