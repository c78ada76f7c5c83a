// A device's IO figures, counted by the Rust queue runtime: the types
// `Device.stats()` returns, and the same figures read from another process.
import binding = require('../binding.js')
import { nativeSync } from '../errors.js'

import type { NativeDeviceStats, NativeOpStats, NativeQueueStats } from '../../index.js'

/** One operation's figures: IOs, bytes, errors, and a latency histogram. */
export type OpStats = NativeOpStats
/** One queue's figures (or a device's total): per operation, and failed IOs by errno. */
export type QueueStats = NativeQueueStats

/** What a TypeScript target's dispatcher handed over so far. */
export interface DispatchStats {
  /** Batches handed to JavaScript. */
  batches: number
  /** IOs in them. */
  ios: number
  /** Reads served by a read route, without JavaScript. */
  routedReads: number
  /** Writes served by a write route, without JavaScript. */
  routedWrites: number
}

/**
 * A device's figures, per queue and in total, as its queue threads count
 * every IO they complete (Rust and TypeScript targets alike, passthrough
 * and routed reads included). Latency runs from the IO's arrival on its
 * queue to its completion.
 */
export interface DeviceStats extends NativeDeviceStats {
  /** TypeScript targets only: the hand-overs to JavaScript. */
  dispatch?: DispatchStats
}

/** The operations counted, as `QueueStats` names them. */
export const OPS = ['read', 'write', 'flush', 'discard', 'writeZeroes', 'other'] as const
export type StatsOp = (typeof OPS)[number]

let bounds: readonly number[] | undefined

/**
 * The exclusive upper bounds, in seconds, of the latency buckets
 * (`OpStats.buckets[i]` counts IOs faster than `bounds[i]`); the last
 * bucket has none.
 */
export function latencyBucketBounds(): readonly number[] {
  bounds ??= Object.freeze(binding.latencyBucketBounds())
  return bounds
}

/**
 * The figures of device `id` as the ublk-ts process serving it publishes
 * them (under /run/ublk-ts): this process or another one. ENODEV when no
 * live ublk-ts process serves it.
 */
export function deviceStats(id: number): DeviceStats {
  return nativeSync(() => binding.readDeviceStats(id))
}
