import { UblkError } from '../errors.js'
import type { TargetArgs } from '../target-module.js'
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type BackingFile,
  type Io,
  type Target,
} from '../target.js'

export interface LoopOptions {
  /** O_DIRECT where the file system allows it (default true). */
  direct?: boolean
  readOnly?: boolean
  /**
   * Serve reads on the queue threads without calling into JavaScript
   * (`TargetContext.routeReads`; default true). False keeps every read
   * on the JavaScript path, one trip per IO.
   */
  routeReads?: boolean
  /**
   * Serve writes the same way (`TargetContext.routeWrites`; default true).
   * False keeps every write on the JavaScript path, one trip per batch.
   */
  routeWrites?: boolean
}

/**
 * Serves the device from a file or block device, with its reads and writes
 * on the queue's own io_uring and straight into the IO's buffer.
 */
export function loopTarget(path: string, options: LoopOptions = {}): Target {
  let file: BackingFile | undefined
  const backing = (): BackingFile => {
    if (!file) throw Object.assign(new Error('loop target used before open'), { code: 'EIO' })
    return file
  }

  // Reads and writes go straight between the file and the IO's buffer, and
  // the queue thread completes them: one trip through JavaScript per IO,
  // none while they are routed (a routed read or write that failed
  // arrives here with its error, and fails).
  const read = (io: Io): void => {
    if (io.failedRead) throw io.failedRead.error
    io.passthrough(backing(), io.offset)
  }
  const write = (io: Io): void => {
    if (io.failedWrite) throw io.failedWrite.error
    io.passthrough(backing(), io.offset)
  }

  const target: Target = {
    name: 'loop-ts',
    async open(ctx) {
      file = await ctx.openFile(path, { direct: options.direct ?? true, readOnly: options.readOnly ?? false })
      if (file.size < ctx.size) {
        throw Object.assign(new Error(`${path} holds ${file.size} bytes, less than the device's ${ctx.size}`), {
          code: 'EINVAL',
        })
      }
      if (options.routeReads ?? true) ctx.routeReads({ files: [file] })
      if (!options.readOnly && (options.routeWrites ?? true)) ctx.routeWrites({ file })
    },
    read,
    fua: true,
    zeroCopy: true,
    async flush(io) {
      await io.fdatasync(backing())
    },
    async discard(io) {
      await io.fallocate(backing(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io.offset, io.length)
    },
    async writeZeroes(io) {
      await io.fallocate(backing(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, io.offset, io.length)
    },
  }
  if (!options.readOnly) target.write = write
  return target
}

/**
 * As a target module, for worker threads: `{ module:
 * require.resolve('ublk-ts/lib/targets/loop.js'), args: { file } }`, with
 * `direct`, `readOnly`, `routeReads`, `routeWrites` as in `LoopOptions`.
 */
export default function loopModule(args: Partial<TargetArgs>): Target {
  if (typeof args.file !== 'string') throw new UblkError('EINVAL', 'the loop target module needs args.file: the backing file')
  const flag = (name: keyof LoopOptions): boolean | undefined => (typeof args[name] === 'boolean' ? (args[name] as boolean) : undefined)
  return loopTarget(args.file, { direct: flag('direct'), readOnly: flag('readOnly'), routeReads: flag('routeReads'), routeWrites: flag('routeWrites') })
}
