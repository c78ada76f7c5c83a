// Checks of the numbers filters are configured with: bad ones are refused
// with EINVAL when the filter is made, never when an IO meets them.
import { UblkError } from '../errors.js'

export function nonNegative(filter: string, key: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new UblkError('EINVAL', `${filter}: ${key} must be a number of at least 0, not ${String(value)}`)
  }
  return value
}

export function positive(filter: string, key: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new UblkError('EINVAL', `${filter}: ${key} must be a number above 0, not ${String(value)}`)
  }
  return value
}

export function byteOffset(filter: string, key: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined
  if (!Number.isSafeInteger(value) || value < 0 || value % 512 !== 0) {
    throw new UblkError('EINVAL', `${filter}: ${key} must be a whole number of 512-byte sectors, not ${String(value)}`)
  }
  return value
}
