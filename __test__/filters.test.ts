// Filters and target modules without a device: how options and module
// files are read, and what is refused (EINVAL) before any device exists.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { delay, error, offset, parseFilter, rate, stats, withFilters, UblkError } from '../lib/index.ts'
import type { BackingFile, FailedTransfer, Io, Target } from '../lib/index.ts'
import { loadTarget, parseTargetArgs } from '../lib/target-module.ts'

const geometry = { size: 1 << 20, queues: 1, depth: 32, logicalBlockSize: 512 }

const refusals: Array<[string, () => unknown, RegExp]> = [
  ['an unknown filter', () => parseFilter('gzip'), /not a filter: gzip \(filters: delay, error, rate, log, stats, readonly, offset, cow\)/],
  ['an unknown key', () => parseFilter('delay:seconds=2'), /delay: not KEY=VALUE with a known key: seconds=2 \(keys: ms, read/],
  ['a key without a value', () => parseFilter('delay:ms'), /not KEY=VALUE/],
  ['a value that is not a number', () => parseFilter('delay:ms=soon'), /delay: ms is not a number: soon/],
  ['a negative delay', () => delay({ ms: -1 }), /delay: ms must be a number of at least 0/],
  ['an errno that does not exist', () => parseFilter('error:errno=EWHATEVER'), /error: not an errno name: EWHATEVER/],
  ['a rate above 1', () => error({ rate: 1.5 }), /error: rate must be between 0 and 1/],
  ['an unknown operation', () => parseFilter('error:ops=read+copy'), /error: not an operation: copy/],
  ['an offset that is not whole sectors', () => offset({ offset: 1000 }), /offset: offset must be a whole number of 512-byte sectors/],
  ['offset without its offset', () => parseFilter('offset:length=1M'), /offset: offset is required/],
  ['a size that is not one', () => parseFilter('rate:bytesPerSecond=fast'), /rate: bytesPerSecond: not a size: fast/],
  ['a zero rate', () => rate({ iops: 0 }), /rate: iops must be a number above 0/],
  ['cow without an overlay', () => parseFilter('cow'), /cow: overlay must be the path of a file/],
  ['a stats interval of 0', () => stats({ every: 0 }), /stats: every must be a number above 0/],
]

for (const [what, make, message] of refusals) {
  test(`filters refuse ${what} with EINVAL`, (t) => {
    const err = t.throws(make, { instanceOf: UblkError })
    t.is(err?.code, 'EINVAL')
    t.regex(err?.message ?? '', message)
  })
}

test('parseFilter reads sizes, lists and numbers', (t) => {
  t.is(parseFilter('rate:bytesPerSecond=10M,iops=500').name, 'rate')
  t.is(parseFilter('error:errno=ENOSPC,ops=write+discard,offset=1M,length=64k,rate=0.5').name, 'error')
  t.is(parseFilter('readonly').name, 'readonly')
  t.is(parseFilter('cow:overlay=/tmp/x.img').name, 'cow')
})

test('withFilters: the first filter is the outermost, and sees each IO first', async (t) => {
  const seen: string[] = []
  const tracer = (name: string) => ({
    name,
    wrap: (next: Target): Target => ({
      ...next,
      read: async (io: Io) => {
        seen.push(name)
        await next.read(io)
      },
    }),
  })
  const target = withFilters({ name: 'inner', read: () => void seen.push('target') }, [tracer('outer'), tracer('middle')])
  await target.read({} as Io)
  t.deepEqual(seen, ['outer', 'middle', 'target'])
})

test('a filter keeps the operations the target below has, and no others', (t) => {
  const below: Target = { read() {}, write() {}, flush() {} }
  const filtered = withFilters(below, [delay({ ms: 1 }), stats()])
  t.is(typeof filtered.write, 'function')
  t.is(typeof filtered.flush, 'function')
  t.false('discard' in filtered)
  t.false('writeZeroes' in filtered)
  t.false('write' in withFilters({ read() {} }, [parseFilter('log')]), 'a read-only target stays read-only')
  t.false('write' in withFilters(below, [parseFilter('readonly')]))
  t.is(typeof withFilters({ read() {} }, [parseFilter('cow:overlay=/tmp/o')]).write, 'function', 'cow makes it writable')
})

test('parseTargetArgs: options in camelCase, flags, negations and the rest in order', (t) => {
  t.deepEqual(parseTargetArgs(['--file', '/a.img', '--read-only', '--chunk-size=64k', '--no-cache', 'x', '--', 'y']), {
    _: ['x', 'y'],
    file: '/a.img',
    readOnly: true,
    chunkSize: '64k',
    cache: false,
  })
})

test('loadTarget: a TypeScript module exporting a target, a factory or a class', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-target-module-'))
  try {
    const object = join(dir, 'object.ts')
    writeFileSync(object, "const size: number = 1\nexport default { name: 'object', read() { return size } }\n")
    t.is((await loadTarget(object, parseTargetArgs([]), geometry)).name, 'object')

    const factory = join(dir, 'factory.ts')
    writeFileSync(factory, 'export default (args: { tag?: string }, device: { size: number }) => ({ name: `${args.tag}-${device.size}`, read() {} })\n')
    t.is((await loadTarget(factory, parseTargetArgs(['--tag', 'made']), geometry)).name, `made-${1 << 20}`)

    const klass = join(dir, 'klass.mts')
    writeFileSync(klass, 'export default class Disk { name: string; constructor(_a: unknown, d: { depth: number }) { this.name = `depth ${d.depth}` } read() {} }\n')
    t.is((await loadTarget(klass, parseTargetArgs([]), geometry)).name, 'depth 32')
  } finally {
    rmSync(dir, { recursive: true })
  }
})

test('loadTarget: a broken module, a failing factory and a wrong export are EINVAL naming the file and line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-target-module-'))
  const refused = async (file: string, message: RegExp): Promise<void> => {
    const err = await t.throwsAsync(loadTarget(file, parseTargetArgs([]), geometry), { instanceOf: UblkError })
    t.is(err?.code, 'EINVAL')
    t.regex(err?.message ?? '', message)
  }
  try {
    const syntax = join(dir, 'syntax.ts')
    writeFileSync(syntax, 'export default {\n  read( {}\n}\n')
    await refused(syntax, /cannot load .*syntax\.ts: [\s\S]*syntax\.ts:3:/)

    const throws = join(dir, 'throws.ts')
    writeFileSync(throws, "// a comment\nexport default function make() {\n  throw new Error('no disk today')\n}\n")
    await refused(throws, /throws\.ts: its target factory failed: no disk today\n\s+at make \(.*throws\.ts:3:9\)/)

    const nothing = join(dir, 'nothing.js')
    writeFileSync(nothing, 'module.exports = { default: 42 }\n')
    await refused(nothing, /nothing\.js: the default export must be a target/)

    await refused(join(dir, 'missing.ts'), /cannot load .*missing\.ts/)
  } finally {
    rmSync(dir, { recursive: true })
  }
})

test('a factory that fails with an errno keeps it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-target-module-'))
  try {
    const file = join(dir, 'enoent.js')
    writeFileSync(file, "module.exports = () => { throw Object.assign(new Error('no such disk'), { code: 'ENOENT' }) }\n")
    const err = await t.throwsAsync(loadTarget(file, parseTargetArgs([]), geometry))
    t.is((err as { code?: string }).code, 'ENOENT')
  } finally {
    rmSync(dir, { recursive: true })
  }
})

/**
 * An IO as the dispatcher would hand it over, whose backend transfers are
 * scripted: what the filter adapters do with their results is the test.
 */
function scriptedIo(op: 'read' | 'write', transfer: (file: BackingFile) => Promise<number>): Io {
  const buffer = new Uint8Array(4096)
  return {
    op,
    offset: 8192,
    length: 4096,
    fua: false,
    queue: 0,
    buffer,
    signal: new AbortController().signal,
    passthrough() {
      throw new Error('a filter must not hand its IO to the queue thread')
    },
    mirror() {
      throw new Error('a filter must not hand its IO to the queue thread')
    },
    readFrom: (f) => transfer(f),
    writeTo: (f) => transfer(f),
    fsync: async () => undefined,
    fdatasync: async () => undefined,
    fallocate: async () => undefined,
    sleep: async () => undefined,
  }
}

const file = { path: '/scripted', size: 1 << 20, direct: false, readOnly: false, blockDevice: false }

test('below a filter, a mirrored write lands every copy; the failed ones go to onWriteError, which decides', async (t) => {
  const other = { ...file, path: '/scripted-other' }
  const landed: string[] = []
  const transfer = async (f: BackingFile) => {
    if (f === other) throw Object.assign(new Error('member gone'), { code: 'EIO' })
    landed.push(f.path)
    return 4096
  }
  let failures: readonly FailedTransfer[] = []
  const handled = withFilters({ read() {}, write: (io) => io.mirror([file, other], io.offset, (f) => void (failures = f)) }, [stats()])
  await handled.write!(scriptedIo('write', transfer))
  t.deepEqual(landed, ['/scripted'])
  t.deepEqual(
    failures.map((f) => [f.file.path, (f.error as { code?: string }).code]),
    [['/scripted-other', 'EIO']],
  )
  const unhandled = withFilters({ read() {}, write: (io) => io.mirror([file, other], io.offset) }, [stats()])
  const err = await t.throwsAsync(Promise.resolve(unhandled.write!(scriptedIo('write', transfer))))
  t.is((err as { code?: string }).code, 'EIO', 'without a handler a failed copy fails the IO')
  const reads = withFilters({ read: (io) => io.mirror([file], io.offset), write() {} }, [stats()])
  const refused = await t.throwsAsync(Promise.resolve(reads.read!(scriptedIo('read', transfer))))
  t.is((refused as { code?: string }).code, 'EINVAL', 'a read is not mirrored')
})

test('below a filter, a short passthrough write fails its IO with EIO', async (t) => {
  const target = withFilters({ read() {}, write: (io) => io.passthrough(file, io.offset) }, [stats()])
  const err = await t.throwsAsync(Promise.resolve(target.write!(scriptedIo('write', async () => 1024))))
  t.is((err as { code?: string }).code, 'EIO')
  t.regex(err!.message, /1024 of 4096 bytes/)
  await t.notThrowsAsync(Promise.resolve(target.write!(scriptedIo('write', async () => 4096))))
})

test('below a filter, a failed passthrough is the outcome, whatever the method does after; nothing goes unhandled', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason)
  process.on('unhandledRejection', onUnhandled)
  try {
    const target = withFilters(
      {
        async read(io) {
          io.passthrough(file, io.offset)
          // The method goes on after handing the IO over, then fails: too late to matter.
          await new Promise((resolve) => setTimeout(resolve, 20))
          throw new Error('after the hand-over')
        },
      },
      [delay({ ms: 0 })],
    )
    const err = await t.throwsAsync(
      Promise.resolve(target.read(scriptedIo('read', () => Promise.reject(Object.assign(new Error('EIO from the disk'), { code: 'EIO' }))))),
    )
    t.regex(err!.message, /EIO from the disk/)
    await new Promise((resolve) => setImmediate(resolve))
    t.deepEqual(unhandled, [])
  } finally {
    process.off('unhandledRejection', onUnhandled)
  }
})

test("below filters, a batch's two hooks get the same array, of the same IOs the methods get", async (t) => {
  const seen: { before?: readonly Io[]; after?: readonly Io[]; written: Io[] } = { written: [] }
  const target = withFilters(
    {
      read() {},
      write: (io) => void seen.written.push(io),
      beforeWrites: (ios) => void (seen.before = ios),
      afterWrites: (ios) => void (seen.after = ios),
    },
    [stats(), offset({ offset: 1 << 20 })],
  )
  const ios = [scriptedIo('write', async () => 4096), scriptedIo('write', async () => 4096)]
  await target.beforeWrites!(ios)
  for (const io of ios) await target.write!(io)
  await target.afterWrites!(ios)
  t.is(seen.before, seen.after)
  t.deepEqual(seen.written, [...seen.before!])
  t.deepEqual(
    seen.written.map((io) => io.offset),
    [8192 + (1 << 20), 8192 + (1 << 20)],
  )
})

test('error: a range fails no flush unless flushes are named', async (t) => {
  const flush = { ...scriptedIo('write', async () => 0), op: 'flush' as const, length: 0, offset: 0 }
  const below: Target = { read() {}, flush() {} }
  await t.notThrowsAsync(Promise.resolve(withFilters(below, [error({ offset: 1 << 20, length: 4096 })]).flush!(flush)))
  const named = withFilters(below, [error({ ops: ['flush'], offset: 1 << 20, length: 4096 })])
  await t.throwsAsync(Promise.resolve(named.flush!(flush)))
})

test('log: a file that cannot be opened is EINVAL when the device starts, not a failed IO', async (t) => {
  const target = withFilters({ read() {} }, [parseFilter('log:file=/nonexistent-dir/x.log')])
  const err = t.throws(() => target.open!({} as never), { instanceOf: UblkError })
  t.is(err?.code, 'EINVAL')
  t.regex(err?.message ?? '', /log: cannot open \/nonexistent-dir\/x.log/)
})
