// Shared by the examples: serve a device until Ctrl-C, then remove it.
import type { Device } from '../lib/index.ts'

export async function serveUntilSignal(dev: Device): Promise<void> {
  console.log(`serving ${dev.path} (${(await dev.info()).size} bytes); Ctrl-C to stop`)
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
  await dev.stop()
  console.log(`${dev.path} removed`)
}
