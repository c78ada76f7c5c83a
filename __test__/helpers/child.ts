import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** A fixture script as `npm test` compiled it, to run with plain Node. */
export function fixture(name: string): string {
  return join(__dirname, '..', 'fixtures', name.replace(/\.ts$/, '.js'))
}

/**
 * Runs a fixture script in a fresh Node process, inside `wrapper` (a
 * command that runs the rest of its arguments) if given; returns its last
 * JSON line.
 */
export async function runFixture<T>(name: string, wrapper: string[] = []): Promise<T> {
  const [cmd, ...args] = [...wrapper, process.execPath, fixture(name)]
  const { stdout } = await run(cmd!, args, { timeout: 60_000 })
  const lines = stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1]!) as T
}
