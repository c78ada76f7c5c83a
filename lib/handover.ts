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

/** What ended serving, and how to let signals go once the device is dealt with. */
export interface ServingEnd {
  /**
   * Ctrl-C or SIGTERM ('stop'), SIGUSR2 ('hand-over': a new server asked
   * to take the device over), or the device itself stopping ('gone':
   * deleted by another process).
   */
  how: 'stop' | 'hand-over' | 'gone'
  /** The signal that ended serving, if one did. */
  signal?: NodeJS.Signals
  /** The stop or hand-over is done: signals take their default action again. */
  release(): void
}

const SERVING_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGUSR2'] as const

/**
 * Waits for what ends serving. The signal listeners stay until `release`:
 * a second Ctrl-C or SIGTERM while the device stops or is handed over is
 * answered with a line instead of killing the process half way, which
 * would leave the device behind with no server.
 */
export function untilStopOrHandOver(device: Device): Promise<ServingEnd> {
  return new Promise((resolve) => {
    let ended = false
    const release = (): void => {
      for (const signal of SERVING_SIGNALS) process.off(signal, onSignal)
    }
    const end = (how: ServingEnd['how'], signal?: NodeJS.Signals): void => {
      if (ended) return
      ended = true
      resolve({ how, release, ...(signal ? { signal } : {}) })
    }
    function onSignal(signal: NodeJS.Signals): void {
      if (ended) console.error(`${device.path}: ${signal} while it stops; still stopping (SIGKILL ends this process at once)`)
      else end(signal === 'SIGUSR2' ? 'hand-over' : 'stop', signal)
    }
    for (const signal of SERVING_SIGNALS) process.on(signal, onSignal)
    void device.whenStopped().then(() => end('gone'))
  })
}
