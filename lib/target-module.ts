// Loads a user's target module for `ublk-ts serve`: TypeScript directly
// (through tsx), JavaScript as it is.
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { MessagePort } from 'node:worker_threads'

import { errnoCodeOf, UblkError } from './errors.js'
import type { Target } from './target.js'

/** A target module's options: `--key value`, `--key=value`, `--flag`, `--no-flag`, the rest in `_`. */
export interface TargetArgs {
  readonly [key: string]: string | boolean | readonly string[]
  readonly _: readonly string[]
}

/** What a target factory learns of the device it will serve. */
export interface DeviceGeometry {
  readonly size: number
  readonly queues: number
  readonly depth: number
  readonly logicalBlockSize: number
  /**
   * The queue this instance serves, when each queue is served by its own
   * worker thread with its own instance; absent when one instance serves
   * every queue.
   */
  readonly queue?: number
  /**
   * In a worker, when the module was given with a `primary` instance (see
   * `TargetModule.primary`): this instance's end of a channel to it.
   */
  readonly port?: MessagePort
}

/**
 * What a target module's default export may be: a `Target`, a function
 * returning one (or a promise of one), or a class whose instances are
 * targets. Functions and classes get the target options and the geometry.
 */
export type TargetFactory = (args: TargetArgs, device: DeviceGeometry) => Target | Promise<Target>

/** Target options as a module gets them, from the words after `--`. */
export function parseTargetArgs(words: readonly string[]): TargetArgs {
  const args: Record<string, string | boolean | string[]> = { _: [] }
  const camel = (key: string): string => key.replace(/-([a-z0-9])/g, (_m, c: string) => c.toUpperCase())
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!
    if (word === '--') {
      ;(args._ as string[]).push(...words.slice(i + 1))
      break
    }
    const option = /^--([^=]+)(?:=([\s\S]*))?$/.exec(word)
    if (!option) {
      ;(args._ as string[]).push(word)
      continue
    }
    const [, name, inline] = option
    if (name === '_') throw new UblkError('EINVAL', 'a target option cannot be named _')
    if (inline !== undefined) args[camel(name!)] = inline
    else if (name!.startsWith('no-')) args[camel(name!.slice(3))] = false
    else if (i + 1 < words.length && !words[i + 1]!.startsWith('--')) args[camel(name!)] = words[++i]!
    else args[camel(name!)] = true
  }
  return args as TargetArgs
}

/**
 * The target a module file gives. Errors name the file: a module that
 * fails to load keeps its own message (with the line where TypeScript or
 * JavaScript found the problem), wrapped in EINVAL.
 */
export async function loadTarget(file: string, args: TargetArgs, device: DeviceGeometry): Promise<Target> {
  const url = pathToFileURL(resolve(file)).href
  let exported: unknown
  try {
    const mod = (await (/\.[cm]?tsx?$/.test(file) ? importTypeScript(file, url) : import(url))) as { default?: unknown }
    exported = mod.default
    // A CommonJS module compiled from `export default`.
    if (exported && typeof exported === 'object' && 'default' in exported && !('read' in exported)) {
      exported = (exported as { default: unknown }).default
    }
  } catch (err) {
    throw new UblkError('EINVAL', `cannot load ${file}: ${describeLoadError(err)}`, { cause: err })
  }
  let target: unknown
  try {
    if (typeof exported === 'function') {
      target = isClass(exported)
        ? new (exported as new (a: TargetArgs, d: DeviceGeometry) => unknown)(args, device)
        : await (exported as TargetFactory)(args, device)
    } else {
      target = exported
    }
  } catch (err) {
    // An errno the factory names (ENOENT for a missing file) is kept.
    throw new UblkError(errnoCodeOf(err) ?? 'EINVAL', `${file}: its target factory failed: ${describeLoadError(err)}`, { cause: err })
  }
  if (!target || typeof (target as Target).read !== 'function') {
    throw new UblkError(
      'EINVAL',
      `${file}: the default export must be a target (an object with a read method), a function returning one, or a class`,
    )
  }
  return target as Target
}

async function importTypeScript(file: string, url: string): Promise<unknown> {
  // Stack traces then point into the .ts file, not the JavaScript made of it.
  process.setSourceMapsEnabled(true)
  if (!/\.mts$/.test(file)) {
    // As CommonJS where the file allows it: tsx's ES module path gives
    // errors thrown in a CommonJS-typed file no line in it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- tsx's CommonJS loader, loaded only when a .ts file is served
    const cjs = require('tsx/cjs/api') as { require: (id: string, parent: string) => unknown }
    try {
      return cjs.require(resolve(file), __filename)
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code
      if (code !== 'ERR_REQUIRE_ESM' && code !== 'ERR_REQUIRE_ASYNC_MODULE') throw err
    }
  }
  const esm = (await import('tsx/esm/api')) as { tsImport: (specifier: string, parent: string) => Promise<unknown> }
  return esm.tsImport(url, __filename)
}

function isClass(fn: unknown): boolean {
  return typeof fn === 'function' && /^class[\s{]/.test(Function.prototype.toString.call(fn))
}

/** The error's message, with the place in the user's file it points at. */
function describeLoadError(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const at = err.stack
    ?.split('\n')
    .slice(1)
    .find((line) => /^\s+at /.test(line) && !line.includes('node_modules') && !line.includes('node:'))
  return at ? `${err.message}\n${at}` : err.message
}
