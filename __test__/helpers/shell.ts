import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface Outcome {
  code: number
  stdout: string
  stderr: string
}

/**
 * Runs a command without blocking the event loop (the device under test is
 * served by this very process) and reports how it ended instead of throwing.
 */
export async function sh(cmd: string, args: string[], timeoutMs = 120_000): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) }
  }
}

/** dd one block with O_DIRECT; the kernel's error text on failure. */
export function ddRead(path: string, offset: number, bs = 4096): Promise<Outcome> {
  return sh('dd', [`if=${path}`, 'of=/dev/null', `bs=${bs}`, 'count=1', `skip=${offset / bs}`, 'iflag=direct'])
}
