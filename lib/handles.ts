// The files and staging buffers one device handed out, and their native
// handles. Handles are kept off the objects users see: an object this
// device did not make (another device's, or a forged one) has none here and
// is refused with EBADF before anything reaches the native side, which
// checks the handle against the device's own table again.
import { UblkError } from './errors.js'
import type { BackingFile, StagingBuffer } from './target.js'

/** What the native side reports of an opened file. */
export interface OpenedFile {
  handle: number
  size: number
  direct: boolean
  readOnly: boolean
  blockDevice: boolean
}

export class Handles {
  readonly #handleOf = new WeakMap<object, number>()
  readonly #files = new Map<number, BackingFile>()

  /** The BackingFile users get for a file the native side opened. */
  file(path: string, opened: OpenedFile): BackingFile {
    const { handle, size, direct, readOnly, blockDevice } = opened
    const file: BackingFile = Object.freeze({ path, size, direct, readOnly, blockDevice })
    this.#handleOf.set(file, handle)
    this.#files.set(handle, file)
    return file
  }

  /** The StagingBuffer users get for native staging memory. */
  staging(handle: number, memory: ArrayBuffer, free: () => void): StagingBuffer {
    const buffer: StagingBuffer = Object.freeze({ bytes: new Uint8Array(memory), free })
    this.#handleOf.set(buffer, handle)
    return buffer
  }

  /** The native handle of a file or staging buffer of this device; EBADF for anything else. */
  handleOf(item: BackingFile | StagingBuffer, what: string): number {
    const handle = typeof item === 'object' && item !== null ? this.#handleOf.get(item) : undefined
    if (handle === undefined) {
      throw new UblkError('EBADF', `${what}: not a ${'bytes' in Object(item) ? 'staging buffer' : 'file'} of this device`)
    }
    return handle
  }

  /** The file with a native handle, to name the one a routed read failed on. */
  fileOf(handle: number): BackingFile | undefined {
    return this.#files.get(handle)
  }
}
