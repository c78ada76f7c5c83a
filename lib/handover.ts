// Live upgrades between serving processes: the new one asks the running
// one to hand its device over, and every serving command answers.
import { deviceInfo, type Device } from './device.js'
import { UblkError } from './errors.js'

/**
 * Hands `device` over to the process that asked for it: leaves it to the
 * kernel and exits at once, as a crash would, but on purpose. The kernel
 * keeps the IOs in flight for the next server.
 */
export function handOverAndExit(device: Device, say: (line: string) => void): never {
  device.abandon()
  say(`${device.path} handed over; this process exits`)
  process.exit(0)
}

/**
 * A live upgrade: asks the process serving device `id` to hand it over
 * (SIGUSR2, which every serving ublk-ts command answers); says when, so
 * the caller can tell how long the device's IO waited for its new server.
 */
export async function askForHandOver(id: number): Promise<{ pid: number; at: number } | undefined> {
  const info = await deviceInfo(id)
  if (info.recovery === 'none') {
    throw new UblkError('EINVAL', `/dev/ublkb${id} was added without --recovery reissue: it cannot be handed over`)
  }
  if (!info.serverAlive) return undefined
  process.kill(info.serverPid, 'SIGUSR2')
  return { pid: info.serverPid, at: Date.now() }
}

/**
 * Resolves with what ended serving: Ctrl-C or SIGTERM ('stop'), SIGUSR2
 * ('hand-over': a new server asked to take the device over), or the
 * device itself stopping ('gone': deleted by another process).
 */
export function untilStopOrHandOver(device: Device): Promise<'stop' | 'hand-over' | 'gone'> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('stop'))
    process.once('SIGTERM', () => resolve('stop'))
    process.once('SIGUSR2', () => resolve('hand-over'))
    void device.whenStopped().then(() => resolve('gone'))
  })
}
