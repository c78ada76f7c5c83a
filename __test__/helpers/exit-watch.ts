// After a test file's last test: a process still alive some seconds later
// has something keeping its event loop busy (a child process left running,
// a socket, a timer). Without this, ava waits its whole timeout and then
// fails the run for it. This names what keeps the process alive, loudly,
// kills the children it finds, and exits.
import type { ChildProcess } from 'node:child_process'

import test from 'ava'

interface Handle {
  constructor?: { name?: string }
  pid?: number
  spawnargs?: string[]
}

export function watchExit(file: string, graceMs = 10_000): void {
  test.after.always(() => {
    setTimeout(() => {
      const handles = (process as unknown as { _getActiveHandles(): Handle[] })._getActiveHandles()
      const names = handles.map((h) => `${h.constructor?.name ?? 'handle'}${h.pid ? ` pid ${h.pid} (${h.spawnargs?.join(' ')})` : ''}`)
      console.error(`LEAK: ${file} was still alive ${graceMs / 1000} s after its last test, held by: ${names.join(', ')}`)
      for (const h of handles) if (h.pid) (h as unknown as ChildProcess).kill('SIGKILL')
      process.exit(process.exitCode ?? 0)
    }, graceMs).unref()
  })
}
