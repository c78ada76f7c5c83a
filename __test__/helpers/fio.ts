import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

import type { ExecutionContext } from 'ava'

import { deviceAndFileDigests } from './files.ts'

const run = promisify(execFile)

export interface FioJob {
  rw: 'read' | 'write' | 'randread' | 'randwrite' | 'randrw'
  bs: string
  iodepth: number
  size?: string
  runtime?: number
  numjobs?: number
  verify?: 'crc32c'
  extra?: string[]
}

export interface FioResult {
  readIos: number
  writeIos: number
  errors: number
  readIops: number
  writeIops: number
}

interface FioJson {
  jobs: Array<{
    error: number
    read: { total_ios: number; iops: number }
    write: { total_ios: number; iops: number }
  }>
}

/** Runs fio with the io_uring engine and direct IO against `filename`. */
export async function fio(filename: string, job: FioJob): Promise<FioResult> {
  const args = [
    '--name=job',
    `--filename=${filename}`,
    '--ioengine=io_uring',
    '--direct=1',
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--size=${job.size ?? '64M'}`,
    `--numjobs=${job.numjobs ?? 1}`,
    '--group_reporting',
    '--output-format=json',
  ]
  if (job.runtime) args.push(`--runtime=${job.runtime}`, '--time_based')
  if (job.verify) args.push(`--verify=${job.verify}`, '--do_verify=1', '--verify_fatal=1')
  args.push(...(job.extra ?? []))
  const { stdout } = await run('fio', args, { maxBuffer: 16 << 20 })
  const parsed = JSON.parse(stdout.slice(stdout.indexOf('{'))) as FioJson
  const jobs = parsed.jobs
  return {
    readIos: jobs.reduce((n, j) => n + j.read.total_ios, 0),
    writeIos: jobs.reduce((n, j) => n + j.write.total_ios, 0),
    errors: jobs.reduce((n, j) => n + j.error, 0),
    readIops: jobs.reduce((n, j) => n + j.read.iops, 0),
    writeIops: jobs.reduce((n, j) => n + j.write.iops, 0),
  }
}

/**
 * fio crc32c verify through `device`; then the file behind it must hold
 * exactly what the device reads back. Returns fio's result.
 */
export async function verifyAgainstFile(
  t: Pick<ExecutionContext, 'is'>,
  device: string,
  file: string,
  job: Omit<FioJob, 'verify'>,
): Promise<FioResult> {
  const r = await fio(device, { ...job, verify: 'crc32c' })
  t.is(r.errors, 0, 'fio verify')
  const [fromDevice, fromFile] = await deviceAndFileDigests(device, file)
  t.is(fromDevice, fromFile, 'the file holds what the device reads back')
  return r
}
