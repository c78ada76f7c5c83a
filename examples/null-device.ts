// Creates a null ublk device, drives IO through it with fio, shows what the
// kernel saw, and removes it.
//
//   node --import tsx examples/null-device.ts
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'

import { createDevice, kernelFeatures, listDevices } from '../lib/index.ts'

function sysfs(dev: string, file: string): string {
  return readFileSync(`/sys/block/${dev.replace('/dev/', '')}/${file}`, 'utf8').trim()
}

async function main(): Promise<void> {
  const features = await kernelFeatures()
  console.log(`kernel ublk features: ${features.names.join(', ')}`)

  await using dev = await createDevice({ target: 'null', size: 1 << 30, queues: 1, depth: 64 })
  const info = await dev.info()
  console.log(`\ncreated ${dev.path}: id ${info.id}, state ${info.state}, served by pid ${info.serverPid}`)
  console.log(
    `  the kernel reports ${Number(sysfs(dev.path, 'size')) * 512} bytes, ` +
      `${sysfs(dev.path, 'queue/logical_block_size')}-byte blocks, ${info.queues} queue(s) of depth ${info.depth}`,
  )

  console.log('\nfio: 4 KiB random reads and writes, io_uring, queue depth 32, 3 seconds')
  const out = execFileSync(
    'fio',
    ['--name=demo', `--filename=${dev.path}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw', '--bs=4k',
      '--iodepth=32', '--size=1G', '--runtime=3', '--time_based', '--output-format=json'],
    { encoding: 'utf8' },
  )
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]
  console.log(
    `  ${job.read.total_ios} reads (${Math.round(job.read.iops)} IOPS), ` +
      `${job.write.total_ios} writes (${Math.round(job.write.iops)} IOPS), errors: ${job.error}`,
  )

  const listed = (await listDevices()).map((d) => `${d.blockPath} (${d.state})`)
  console.log(`\nublk devices now: ${listed.join(', ')}`)

  await dev.stop()
  console.log(`\nstopped: ${dev.path} ${existsSync(dev.path) ? 'still exists!' : 'is gone'}`)
  console.log(`ublk devices now: ${(await listDevices()).length}`)
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
