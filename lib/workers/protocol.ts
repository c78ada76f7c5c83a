// What a queue's worker thread and the thread that runs the device say to
// each other. Errors cross as code and message: a structured clone keeps
// an Error's message but not its errno-style code.
import type { MessagePort } from 'node:worker_threads'

import { errnoCodeOf, toUblkError, UblkError } from '../errors.js'

import type { DeviceGeometry, TargetArgs } from '../target-module.js'
import type { CloseReason } from '../target.js'

import type { NativeCapabilities } from '../../index.js'

/** What a queue's worker starts with (its `workerData`). */
export interface QueueWorkerData {
  /** The target module's file path. */
  file: string
  args: TargetArgs
  geometry: DeviceGeometry
  /** The queue this worker serves. */
  queue: number
  ioTimeoutMs: number
  /** Per queue: hand-overs, IOs (the worker writes its own pair). */
  counters: SharedArrayBuffer
  /** With a primary instance on the device's thread: this worker's end of a channel to it. */
  port?: MessagePort
}

export interface WireError {
  code: string
  message: string
}

/** An error as it crosses between threads. */
export function toWire(err: unknown): WireError {
  const e = toUblkError(err)
  return { code: errnoCodeOf(e) ?? 'EIO', message: e.message }
}

/** An error that crossed, with its code again. */
export function fromWire(err: WireError): UblkError {
  return new UblkError(err.code, err.message)
}

/** From the worker. */
export type WorkerMessage =
  | { kind: 'loaded'; capabilities: NativeCapabilities; name: string | undefined }
  | { kind: 'ready' }
  | { kind: 'closed' }
  | { kind: 'failed'; error: WireError }

/** To the worker. */
export type ParentMessage =
  /** `hostQueue`: serve the queue's ring from the worker's event loop (`queueThreads: false`). */
  | { kind: 'attach'; token: number; hostQueue: boolean }
  | { kind: 'shutdown' }
  | { kind: 'close'; reason: CloseReason }
