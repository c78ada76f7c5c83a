// Metrics ports, checked before anything listens (light: the CLI loads it at every start).
import { UblkError } from '../errors.js'

/** A port given on the command line: a whole number 0..65535, else EINVAL. */
export function parseMetricsPort(text: string): number {
  if (!/^\d{1,5}$/.test(text.trim()) || Number(text) > 65535) {
    throw new UblkError('EINVAL', `--metrics needs a TCP port 0..65535, got ${JSON.stringify(text)}`)
  }
  return Number(text)
}

export function checkPort(port: unknown): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UblkError('EINVAL', `the metrics port must be a whole number 0..65535, got ${String(port)}`)
  }
  return port
}
