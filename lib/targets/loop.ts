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

  async function read(io: Io): Promise<void> {
    const f = backing()
    let done = 0
    while (done < io.length) {
      const n = await io.readFrom(f, io.offset + done, done, io.length - done)
      if (n === 0) {
        // Past the end of the file: the rest reads as zeroes.
        io.buffer.fill(0, done)
        return
      }
      done += n
    }
  }

  async function write(io: Io): Promise<void> {
    const f = backing()
    let done = 0
    while (done < io.length) {
      done += await io.writeTo(f, io.offset + done, done, io.length - done)
    }
    if (io.fua) await io.fdatasync(f)
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
    },
    read,
    fua: true,
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
