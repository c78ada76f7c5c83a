// ublk-ts as a user gets it from npm: the tarballs `npm pack` made of the
// root package and of the x86_64 glibc package, installed into an empty
// project by scripts/pack.ts (which `npm test` runs before the device
// tests). A program in that project serves a device with a TypeScript-style
// target from the installed package, with no Rust or C toolchain on PATH,
// and the data written through the block device is what the target holds.
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readdirSync, realpathSync, unlinkSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { delimiter, dirname, join } from 'node:path'

import test from 'ava'

import { deviceGone, requireUblk } from '../../helpers/kernel.ts'
import { sh } from '../../helpers/shell.ts'

const installDir = join(__dirname, '..', '..', '..', '.packed-install')
const binaryPackage = join(installDir, 'node_modules', 'ublk-ts-linux-x64-gnu')
const toolchain = ['cargo', 'rustc', 'rustup', 'clang', 'zig', 'cargo-zigbuild']

test.before(() => {
  requireUblk()
  if (!existsSync(join(installDir, 'node_modules', 'ublk-ts', 'package.json')) || !existsSync(binaryPackage)) {
    throw new Error(
      `no packed install in ${installDir}: \`npm test\` makes it after the build; by hand: ` +
        '`bash scripts/build.sh && npx tsc -p tsconfig.test.json && node scripts/pack.js`',
    )
  }
})

/** Node's directory and the system ones, none holding a toolchain binary. */
function bareEnv(): NodeJS.ProcessEnv {
  const dirs = [...new Set([dirname(process.execPath), '/usr/sbin', '/usr/bin', '/sbin', '/bin'])]
  const path = dirs.filter((dir) => !toolchain.some((tool) => existsSync(join(dir, tool))))
  return { HOME: process.env.HOME ?? '/root', PATH: path.join(delimiter) }
}

// The user's program: CommonJS run from the project's directory, so that
// `require('ublk-ts')` resolves the way it does for anyone who installed it.
const program = `
const { createHash } = require('node:crypto')
const { readFileSync } = require('node:fs')
const { createInterface } = require('node:readline')
const { createDevice } = require('ublk-ts')

async function main() {
  const data = new Uint8Array(32 << 20)
  const dev = await createDevice({
    size: data.length,
    queues: 1,
    depth: 32,
    target: {
      read(io) { io.buffer.set(data.subarray(io.offset, io.offset + io.length)) },
      write(io) { data.set(io.buffer, io.offset) },
    },
  })
  const addon = readFileSync('/proc/self/maps', 'utf8').split('\\n')
    .map((line) => line.split(/\\s+/)[5]).find((file) => file && file.endsWith('.node'))
  const ublkTs = require.resolve('ublk-ts')
  console.log(JSON.stringify({ path: dev.path, id: dev.id, addon, ublkTs }))
  for await (const line of createInterface({ input: process.stdin })) {
    const length = Number(line)
    const md5 = createHash('md5').update(data.subarray(0, length)).digest('hex')
    await dev.stop()
    console.log(JSON.stringify({ md5, stopped: dev.stopped }))
    break
  }
}
main().catch((err) => { console.error(err); process.exit(1) })
`

interface Started {
  path: string
  id: number
  addon: string
  ublkTs: string
}

test.serial('a device served from the npm-packed package, installed with no toolchain, holds what was written', async (t) => {
  const env = bareEnv()
  for (const dir of env.PATH!.split(delimiter)) {
    for (const tool of toolchain) t.false(existsSync(join(dir, tool)), `${tool} in ${dir}`)
  }
  t.false(
    readdirSync(join(installDir, 'node_modules', 'ublk-ts')).some((f) => f.endsWith('.node') || f === 'Cargo.toml'),
    'the main package ships neither an addon nor Rust sources',
  )

  const child = spawn(process.execPath, ['-e', program], { cwd: installDir, env, stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)))
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const nextLine = async (what: string): Promise<string> => {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${what} from the program within 60 s: ${stderr}`)), 60_000)
    })
    const next = lines.next().then((r) => {
      if (r.done) throw new Error(`the program ended (${stderr}) before saying ${what}`)
      return r.value
    })
    try {
      return await Promise.race([next, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  const pattern = randomBytes(1 << 20)
  const patternFile = `/tmp/ublk-packed-${process.pid}.bin`
  writeFileSync(patternFile, pattern)
  let started: Started | undefined
  try {
    const t0 = Date.now()
    const elapsed = (): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`
    started = JSON.parse(await nextLine('its device')) as Started
    t.log(`${started.path} served by ${started.addon} (${elapsed()})`)
    t.is(started.addon, join(binaryPackage, 'ublk.linux-x64-gnu.node'), 'the addon is the one of the installed binary package')
    t.is(started.ublkTs, join(installDir, 'node_modules', 'ublk-ts', 'lib', 'index.js'))

    // One shell for both (every process start costs under emulation).
    const readBack = await sh('sh', [
      '-c',
      `dd if=${patternFile} of=${started.path} bs=1M oflag=direct conv=fsync status=none && ` +
        `dd if=${started.path} bs=1M count=1 iflag=direct status=none | md5sum`,
    ])
    t.is(readBack.code, 0, readBack.stderr)
    const expected = createHash('md5').update(pattern).digest('hex')
    t.is(readBack.stdout.split(' ')[0], expected, 'read back through the device')
    t.log(`1 MiB written and read back (${elapsed()})`)

    child.stdin.end(`${pattern.length}\n`)
    const end = JSON.parse(await nextLine('its digest')) as { md5: string; stopped: boolean }
    t.is(end.md5, expected, "the target's memory holds what was written")
    t.true(end.stopped)
    t.is(await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 30_000, 'still running 30 s later'))]), 0, stderr)
    t.true(deviceGone(started.id), 'the device is gone')
    t.log(`stopped, the program exited (${elapsed()})`)

    // npm linked the command line (not run here: one more Node start-up
    // under emulation, for what the CLI tests already cover).
    t.is(realpathSync(join(installDir, 'node_modules', '.bin', 'ublk-ts')), join(installDir, 'node_modules', 'ublk-ts', 'lib', 'cli.js'))
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    unlinkSync(patternFile)
  }
})
