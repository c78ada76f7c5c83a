import { UblkError } from './errors.js'

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }

/** Parses sizes such as 4096, 512k, 64M, 1G (powers of 1024). */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim())
  if (!m) throw new UblkError('EINVAL', `not a size: ${text} (e.g. 4096, 512K, 64M, 1G)`)
  return Number(m[1]) * UNITS[m[2]!.toLowerCase()]!
}

/** Sizes for people: 1.5G, 64M, 4K. */
export function formatSize(bytes: number): string {
  for (const [unit, scale] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= scale) return `${Number((bytes / scale).toFixed(1))}${unit}`
  }
  return `${bytes}B`
}
