// Shared by the examples: serve a device until Ctrl-C, then remove it.
import type { Device } from '../lib/index.ts'

export async function serveUntilSignal(dev: Device): Promise<void> {
  const { size } = await dev.info()
  // Listening before saying so: whoever reads the line may signal at once.
  const stopAsked = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
  console.log(`serving ${dev.path} (${size} bytes); Ctrl-C to stop`)
  await stopAsked
  await dev.stop()
  console.log(`${dev.path} removed`)
}
