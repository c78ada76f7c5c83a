// The CLI as npm installs it (the compiled lib/cli.js, plain Node: a
// process starts in a fraction of the time tsx would take), run from tests.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'

import { sh, type Outcome } from './shell.ts'

const cli = join(__dirname, '..', '..', 'lib', 'cli.js')

/** Runs `ublk-ts ...args` to its end. */
export function ublkTs(...args: string[]): Promise<Outcome> {
  return sh(process.execPath, [cli, ...args])
}

export interface Server {
  child: ChildProcess
  /** The block device, once the server says it serves it. */
  path: Promise<string>
  /** Resolves with the exit code (or the signal's name) when the server has ended and its output is read. */
  exited: Promise<number | string>
  output(): string
}

/** Starts a serving command (`add ...`, `recover ...`, `raid1 create ...`) in the background. */
export function serve(...args: string[]): Server {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()))
  // 'close', not 'exit': by then all it printed has been read, so output() is complete.
  const exited = new Promise<number | string>((resolve) => child.once('close', (code, signal) => resolve(code ?? signal ?? -1)))
  const path = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /serving (\/dev\/ublkb\d+)/.exec(out)
      if (m) resolve(m[1]!)
    })
    void exited.then((how) => reject(new Error(`exited (${how}) before serving: ${out}`)))
  })
  // A caller that only waits for the exit must not see an unhandled rejection.
  path.catch(() => {})
  return { child, path, exited, output: () => out }
}
