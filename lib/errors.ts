import { constants } from 'node:os'

const ERRNO = constants.errno as Record<string, number | undefined>
const EIO = ERRNO.EIO ?? 5

/**
 * Every failure of this library: `code` is the errno's name (`'EINVAL'`,
 * `'ENODEV'`, ...) and `errno` its negative number, as with Node's own
 * system errors (`-22` for `EINVAL`).
 */
export class UblkError extends Error {
  readonly code: string
  readonly errno: number

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'UblkError'
    this.code = code
    this.errno = -(ERRNO[code] ?? 0)
  }
}

/** The number of an errno name, e.g. 28 for `'ENOSPC'` (0 if unknown). */
export function errnoNumber(code: string): number {
  return ERRNO[code] ?? 0
}

/** The errno name an error's `code` is, if it is one this system knows (`'ENOSPC'`). */
export function errnoCodeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && ERRNO[code] !== undefined ? code : undefined
}

/** The errno (positive) an error stands for: the one its `code` names, or EIO. */
export function errnoOf(err: unknown): number {
  const code = errnoCodeOf(err)
  return code === undefined ? EIO : ERRNO[code]!
}

/** The name of a positive errno, e.g. `'ENOSPC'` for 28. */
export function errnoName(errno: number): string {
  return Object.keys(ERRNO).find((k) => ERRNO[k] === errno) ?? 'EIO'
}

/** A backend operation's negative result as an error. */
export function backendError(result: number, what: string): UblkError {
  const code = errnoName(-result)
  return new UblkError(code, `${what} failed: ${code}`)
}

const ERRNO_PREFIX = /^(E[A-Z0-9]+): ([\s\S]*)$/

/** napi-rs's own argument errors: a value of the wrong type reached the binding. */
const NAPI_ARGUMENT_CODES = new Set([
  'InvalidArg',
  'ObjectExpected',
  'StringExpected',
  'NumberExpected',
  'BooleanExpected',
  'ArrayExpected',
  'FunctionExpected',
  'BigintExpected',
])

/**
 * Turns an error from the native binding into a `UblkError`. The binding
 * sends the errno as a `"CODE: message"` prefix; argument-type errors raised
 * by napi-rs itself become `EINVAL`.
 */
export function toUblkError(err: unknown): UblkError {
  if (err instanceof UblkError) return err
  if (err instanceof Error) {
    const match = ERRNO_PREFIX.exec(err.message)
    if (match) return new UblkError(match[1]!, match[2]!, { cause: err })
    const napiCode = (err as { code?: unknown }).code
    if (typeof napiCode === 'string' && /^E[A-Z0-9]+$/.test(napiCode)) {
      return new UblkError(napiCode, err.message, { cause: err })
    }
    if (typeof napiCode === 'string' && NAPI_ARGUMENT_CODES.has(napiCode)) {
      return new UblkError('EINVAL', err.message, { cause: err })
    }
    return new UblkError('EIO', err.message, { cause: err })
  }
  return new UblkError('EIO', String(err))
}

/** Runs a call into the binding, rethrowing its failure as a `UblkError`. */
export async function native<T>(call: () => Promise<T> | T): Promise<T> {
  try {
    return await call()
  } catch (err) {
    throw toUblkError(err)
  }
}

/** `native` for synchronous calls. */
export function nativeSync<T>(call: () => T): T {
  try {
    return call()
  } catch (err) {
    throw toUblkError(err)
  }
}
