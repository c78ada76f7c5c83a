// Filters: layers between a device and its target, stackable in code with
// `withFilters(target, [...])` and from the command line with
// `--filter NAME[:KEY=VALUE,...]`.
import { UblkError } from '../errors.js'
import { parseSize } from '../size.js'
import type { IoOp } from '../target.js'
import { cow } from './cow.js'
import { delay } from './delay.js'
import { error } from './error.js'
import type { Filter } from './filter.js'
import { log } from './log.js'
import { offset } from './offset.js'
import { rate } from './rate.js'
import { readonly } from './readonly.js'
import { stats } from './stats.js'

export { AwaitableIo, withFilters } from './filter.js'
export type { Filter } from './filter.js'
export { cow, delay, error, log, offset, rate, readonly, stats }
export type { CowOptions } from './cow.js'
export type { DelayOptions } from './delay.js'
export type { ErrorOptions } from './error.js'
export type { LogOptions } from './log.js'
export type { OffsetOptions } from './offset.js'
export type { RateOptions } from './rate.js'
export type { StatsFilter, StatsOptions } from './stats.js'
export type { OpTally, Tallies } from './counts.js'

type Value = 'number' | 'size' | 'text' | 'ops'

/** Each filter's command-line keys, and how their values read. */
const SPECS: Record<string, { keys: Record<string, Value>; make: (o: Record<string, unknown>) => Filter }> = {
  delay: {
    keys: { ms: 'number', read: 'number', write: 'number', flush: 'number', discard: 'number', writeZeroes: 'number' },
    make: (o) => delay(o),
  },
  error: {
    keys: { errno: 'text', rate: 'number', ops: 'ops', offset: 'size', length: 'size' },
    make: (o) => error(o),
  },
  rate: { keys: { bytesPerSecond: 'size', iops: 'number' }, make: (o) => rate(o) },
  log: { keys: { file: 'text', summaryEvery: 'number' }, make: (o) => log(o) },
  stats: { keys: { every: 'number' }, make: (o) => stats(o) },
  readonly: { keys: {}, make: () => readonly() },
  offset: { keys: { offset: 'size', length: 'size' }, make: (o) => offset(o as { offset: number }) },
  cow: { keys: { overlay: 'text' }, make: (o) => cow(o as { overlay: string }) },
}

/** The filters `parseFilter` knows, by name. */
export const FILTER_NAMES = Object.keys(SPECS)

/**
 * A filter from its command-line form: `NAME` or `NAME:KEY=VALUE,...`,
 * e.g. `delay:ms=2`, `error:errno=ENOSPC,ops=write,offset=1M,length=64k`,
 * `rate:bytesPerSecond=10M`, `cow:overlay=/tmp/overlay.img`. Sizes take
 * k/M/G suffixes; `ops` lists operations joined by `+`. EINVAL for an
 * unknown filter, key or value.
 */
export function parseFilter(text: string): Filter {
  const colon = text.indexOf(':')
  const name = colon < 0 ? text : text.slice(0, colon)
  const spec = SPECS[name]
  if (!spec) throw new UblkError('EINVAL', `not a filter: ${name} (filters: ${FILTER_NAMES.join(', ')})`)
  const options: Record<string, unknown> = {}
  const rest = colon < 0 ? '' : text.slice(colon + 1)
  for (const pair of rest === '' ? [] : rest.split(',')) {
    const eq = pair.indexOf('=')
    const key = eq < 0 ? pair : pair.slice(0, eq)
    const kind = spec.keys[key]
    if (!kind || eq < 0) {
      const known = Object.keys(spec.keys)
      throw new UblkError('EINVAL', `${name}: not KEY=VALUE with a known key: ${pair} (keys: ${known.join(', ') || 'none'})`)
    }
    options[key] = parseValue(name, key, kind, pair.slice(eq + 1))
  }
  return spec.make(options)
}

function parseValue(filter: string, key: string, kind: Value, text: string): unknown {
  switch (kind) {
    case 'text':
      return text
    case 'ops':
      return text.split('+') as IoOp[]
    case 'size':
      try {
        return parseSize(text)
      } catch (err) {
        throw new UblkError('EINVAL', `${filter}: ${key}: ${(err as Error).message}`)
      }
    case 'number': {
      const n = Number(text)
      if (text.trim() === '' || !Number.isFinite(n)) throw new UblkError('EINVAL', `${filter}: ${key} is not a number: ${text}`)
      return n
    }
  }
}
