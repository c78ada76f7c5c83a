// Live upgrades between serving processes: the new one asks the running
// one to hand its device over, and every serving command answers.
import { deviceInfo } from './device.js'
import { UblkError } from './errors.js'

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
 * Resolves with what ended serving: Ctrl-C or SIGTERM ('stop'), or
 * SIGUSR2 ('hand-over': a new server asked to take the device over).
 */
export function untilStopOrHandOver(): Promise<'stop' | 'hand-over'> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('stop'))
    process.once('SIGTERM', () => resolve('stop'))
    process.once('SIGUSR2', () => resolve('hand-over'))
  })
}
