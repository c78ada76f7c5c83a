import { closeSync, ftruncateSync, openSync } from 'node:fs'

import { UblkError } from '../errors.js'
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, type BackingFile, type Io, type Target } from '../target.js'
import { methodOf, runAwaited, shortTransfer, unroutedContext, type Filter } from './filter.js'
import { SectorSet } from './sectors.js'

export interface CowOptions {
  /**
   * The file writes go to. It is made anew, empty and as large as the
   * device, when the device starts: what it held before is not used.
   */
  overlay: string
}

/**
 * Copy on write (nbdkit's cow filter): writes, discards and write-zeroes go
 * to an overlay file, and the target below is only ever read. A read is
 * served from the overlay where it was written, from the target below
 * elsewhere, and from both, sector by sector, where it spans the two. The
 * device is writable even over a read-only target; what was written lives
 * as long as this process serves it. Which sectors were written is known
 * to this process only, so a device with it cannot be handed to another
 * one (`recovery`, live upgrades): the command line refuses that.
 */
export function cow(options: CowOptions): Filter {
  if (typeof options.overlay !== 'string' || options.overlay === '') {
    throw new UblkError('EINVAL', 'cow: overlay must be the path of a file')
  }
  const path = options.overlay

  return {
    name: 'cow',
    wrap(next): Target {
      const written = new SectorSet()
      let overlayFile: BackingFile | undefined
      const overlay = (): BackingFile => {
        if (!overlayFile) throw new UblkError('EIO', 'cow: used before open')
        return overlayFile
      }
      const readBelow = methodOf(next, 'read')!

      const read = async (io: Io): Promise<void> => {
        const runs = written.runs(io.offset, io.length)
        if (runs.length === 1 && !runs[0]!.set) return readBelow(io)
        if (runs.length === 1) return io.passthrough(overlay(), io.offset)
        // Both: the target below fills the IO, then the overlay's sectors
        // are read over it.
        await runAwaited(readBelow, io)
        await Promise.all(
          runs.filter((r) => r.set).map((r) => io.readFrom(overlay(), r.offset, r.offset - io.offset, r.length)),
        )
      }
      // Sectors count as written once their data is in the overlay: a read
      // that follows the write's completion finds them there.
      const zero = async (io: Io): Promise<void> => {
        await io.fallocate(overlay(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io.offset, io.length)
        written.add(io.offset, io.length)
      }

      return {
        name: `cow(${next.name ?? 'typescript'})`,
        fua: true,
        zeroCopy: next.zeroCopy,
        async open(ctx) {
          const fd = openSync(path, 'w')
          try {
            ftruncateSync(fd, ctx.size)
          } finally {
            closeSync(fd)
          }
          overlayFile = await ctx.openFile(path, { direct: true })
          await next.open?.(unroutedContext(ctx))
        },
        close: () => next.close?.(),
        read,
        async write(io) {
          const n = await io.writeTo(overlay(), io.offset, 0, io.length, { dsync: io.fua })
          if (n !== io.length) throw shortTransfer('write', n, io.length, overlay())
          written.add(io.offset, io.length)
        },
        async flush(io) {
          await io.fdatasync(overlay())
        },
        discard: zero,
        writeZeroes: zero,
      }
    },
  }
}
