import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** Runs a fixture script in a fresh Node process; returns its last JSON line. */
export async function runFixture<T>(name: string): Promise<T> {
  const script = join(__dirname, '..', 'fixtures', name)
  const { stdout } = await run(process.execPath, ['--import', 'tsx', script], { timeout: 60_000 })
  const lines = stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1]!) as T
}
