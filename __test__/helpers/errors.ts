import type { ExecutionContext } from 'ava'

import { UblkError } from '../../lib/index.ts'

/** Asserts that `promise` rejects with a `UblkError` carrying `code`. */
export async function rejectsWithCode(
  t: ExecutionContext,
  promise: Promise<unknown>,
  code: string,
  message?: RegExp,
): Promise<UblkError> {
  const err = await t.throwsAsync(promise, { instanceOf: UblkError })
  t.is(err?.code, code, `expected ${code}, got ${err?.code}: ${err?.message}`)
  t.true((err?.errno ?? 0) < 0, 'errno is set, negative as Node has it')
  if (message) t.regex(err?.message ?? '', message)
  return err as UblkError
}
