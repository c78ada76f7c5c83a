// Which 512-byte sectors of a device are set, kept sparsely: a bitmap per
// 32 MiB region that has any.

const SECTOR = 512
const REGION_SECTORS = 1 << 16

export class SectorSet {
  readonly #regions = new Map<number, Uint8Array>()

  /** Sets the sectors of a byte range (whole sectors). */
  add(offset: number, length: number): void {
    for (let s = offset / SECTOR, end = (offset + length) / SECTOR; s < end; s++) {
      const key = Math.floor(s / REGION_SECTORS)
      let bits = this.#regions.get(key)
      if (!bits) {
        bits = new Uint8Array(REGION_SECTORS / 8)
        this.#regions.set(key, bits)
      }
      const i = s % REGION_SECTORS
      bits[i >> 3]! |= 1 << (i & 7)
    }
  }

  has(sector: number): boolean {
    const bits = this.#regions.get(Math.floor(sector / REGION_SECTORS))
    if (!bits) return false
    const i = sector % REGION_SECTORS
    return (bits[i >> 3]! & (1 << (i & 7))) !== 0
  }

  /** A byte range cut into runs of sectors that are all set or all clear, in order. */
  runs(offset: number, length: number): { offset: number; length: number; set: boolean }[] {
    const runs: { offset: number; length: number; set: boolean }[] = []
    for (let s = offset / SECTOR, end = (offset + length) / SECTOR; s < end; s++) {
      const set = this.has(s)
      const last = runs[runs.length - 1]
      if (last && last.set === set) last.length += SECTOR
      else runs.push({ offset: s * SECTOR, length: SECTOR, set })
    }
    return runs
  }
}
