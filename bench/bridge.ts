// The dispatch path alone, no kernel: a synthetic queue thread keeps
// DEPTH reads in flight against the TypeScript null target, handing them
// over in batches (as the device does) or one call per IO (the naive way).
//
//   node --import tsx bench/bridge.ts [--ios N] [--json]
import { parseArgs } from 'node:util'

import binding = require('../lib/binding.js')
import { Dispatcher } from '../lib/dispatch/index.ts'
import { Handles } from '../lib/handles.ts'
import { nullTarget } from '../lib/index.ts'

const { values: opts } = parseArgs({
  options: { ios: { type: 'string', default: '200000' }, json: { type: 'boolean', default: false } },
})
const DEPTH = 128
const total = Number(opts.ios)

async function measure(batchMax: number): Promise<number> {
  const dispatcher = new Dispatcher(nullTarget(), { queues: 1, depth: DEPTH, ioTimeoutMs: 0, handles: new Handles() })
  const bridge = binding.createBridge(
    { target: 'bench', size: 1 << 30, queues: 1, depth: DEPTH, maxIoBytes: 4096 },
    { readOnly: false, flush: false, fua: false, discard: false, writeZeroes: false, batchHooks: false, zeroCopy: false },
    dispatcher.onBatch,
  )
  dispatcher.attach(bridge)
  const ns = await binding.runSyntheticBridge(bridge, total, batchMax)
  return total / (ns / 1e9)
}

async function main(): Promise<void> {
  await measure(DEPTH) // warm up the JIT
  const batched = await measure(DEPTH)
  const perIo = await measure(1)
  const result = {
    ios: total,
    depth: DEPTH,
    batched_iops: Math.round(batched),
    per_io_call_iops: Math.round(perIo),
    batched_vs_per_io_call: Number((batched / perIo).toFixed(2)),
  }
  if (opts.json) {
    console.log(JSON.stringify(result))
    return
  }
  console.log(`bridge dispatch, no kernel, ${total} synthetic 4 KiB reads, ${DEPTH} in flight, TypeScript null target:`)
  console.log(`  batched (one call per hand-over): ${(batched / 1000).toFixed(0)}k IOs/s`)
  console.log(`  one ThreadsafeFunction call per IO: ${(perIo / 1000).toFixed(0)}k IOs/s`)
  console.log(`  ratio: ${result.batched_vs_per_io_call}x`)
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
