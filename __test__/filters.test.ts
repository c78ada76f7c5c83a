// Filters and target modules without a device: how options and module
// files are read, and what is refused (EINVAL) before any device exists.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'

import { delay, error, offset, parseFilter, rate, stats, withFilters, UblkError } from '../lib/index.ts'
import type { Io, Target } from '../lib/index.ts'
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
