import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/**
 * Runs a fixture script in a fresh Node process, inside `wrapper` (a
 * command that runs the rest of its arguments) if given; returns its last
 * JSON line.
 */
export async function runFixture<T>(name: string, wrapper: string[] = []): Promise<T> {
  const script = join(__dirname, '..', 'fixtures', name)
  const [cmd, ...args] = [...wrapper, process.execPath, '--import', 'tsx', script]
  const { stdout } = await run(cmd!, args, { timeout: 60_000 })
  const lines = stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1]!) as T
}
