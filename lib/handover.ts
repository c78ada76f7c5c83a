// Live upgrades between serving processes: the new one asks the running
// one to hand its device over, and every serving command answers.
import { deviceInfo, type Device } from './device.js'
import { UblkError } from './errors.js'

/**
 * Hands `device` over to the process that asked for it: in place where
 * the kernel can quiesce it (`handOver`, Linux 6.16+: the IOs this
 * process holds are answered first), else by leaving it to the kernel and
 * exiting at once, as a crash would, but on purpose (the kernel keeps the
 * IOs in flight for the next server).
 */
export async function handOverOrExit(device: Device, say: (line: string) => void, handOver = () => device.handOver()): Promise<void> {
  try {
    await handOver()
  } catch (err) {
    if ((err as UblkError).code !== 'EOPNOTSUPP') throw err
    device.abandon()
    say(`${device.path} handed over; this process exits`)
    process.exit(0)
  }
  say(`${device.path} handed over (quiesced)`)
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
