// Packs ublk-ts as it would be published, the napi-rs way, and installs the
// tarballs into an empty project with no Rust toolchain in reach:
//
//   - the per-platform package (npm/linux-x64-gnu, from `napi
//     create-npm-dirs`) gets the built addon and the root package's version,
//     as `napi artifacts` and `napi pre-publish` give it;
//   - the root package gets `optionalDependencies` on every package of
//     `napi.targets`, named and versioned as `napi pre-publish` names them
//     (`<name>-<platformArchABI>`: what the generated index.js requires).
//     They are added here, in a staged copy, and not kept in package.json,
//     because `npm ci` refuses a package.json whose dependencies the lock
//     file lacks, and packages not yet published cannot be locked. A release
//     runs `napi pre-publish` itself (.github/workflows/release.yml).
//
// Then `npm install` in `.packed-install/` (gitignored, inside the checkout
// so that the test VM sees it) installs the root tarball, whose optional
// dependency on the x86_64 glibc package resolves to that package's tarball
// (an `overrides` entry stands in for the registry), with PATH cut down to
// the system directories: no cargo, rustc, rustup, clang or zig. The device
// test __test__/device/parts/packed-install.ts serves a device from there.
//
//   node scripts/pack.js           (compiled by `npx tsc -p tsconfig.test.json`)
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join, resolve } from 'node:path'

import { readNapiConfig } from '@napi-rs/cli'

const root = resolve(__dirname, '..')
const installDir = join(root, '.packed-install')
/** The platform packed and installed: the one this machine runs. */
const platform = 'linux-x64-gnu'
/** Tools whose presence would let an install quietly build from source. */
const toolchain = ['cargo', 'rustc', 'rustup', 'clang', 'zig', 'cargo-zigbuild']

interface PackResult {
  filename: string
  files: Array<{ path: string }>
}

function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync('npm', args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
}

function pack(dir: string, destination: string): PackResult {
  const [result] = JSON.parse(npm(['pack', '--json', '--pack-destination', destination], dir)) as PackResult[]
  if (!result) throw new Error(`npm pack in ${dir} said nothing`)
  return result
}

/** The system directories and Node's own, without any that holds a toolchain binary. */
function pathWithoutToolchain(): string {
  const dirs = [dirname(process.execPath), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']
  const kept = [...new Set(dirs)].filter((dir) => !toolchain.some((tool) => existsSync(join(dir, tool))))
  if (!kept.includes(dirname(process.execPath))) {
    throw new Error(`node's directory ${dirname(process.execPath)} also holds a Rust or C toolchain binary`)
  }
  for (const dir of kept) {
    const libclang = existsSync(dir) ? readdirSync(dir).find((f) => f.startsWith('libclang')) : undefined
    if (libclang) throw new Error(`${dir} on the install PATH holds ${libclang}`)
  }
  return kept.join(delimiter)
}

async function main(): Promise<void> {
  const started = Date.now()
  const config = await readNapiConfig(join(root, 'package.json'))
  const version = config.packageJson.version
  const target = config.targets.find((t) => t.platformArchABI === platform)
  if (!target) throw new Error(`${platform} is not in package.json's napi.targets`)

  rmSync(installDir, { recursive: true, force: true })
  const tarballs = join(installDir, 'tarballs')
  mkdirSync(tarballs, { recursive: true })
  const stage = mkdtempSync(join(tmpdir(), 'ublk-ts-pack-'))
  try {
    // The per-platform package: its npm dir, the addon, the root's version.
    const binary = `${config.binaryName}.${platform}.node`
    if (!existsSync(join(root, binary))) throw new Error(`${binary} is missing: run scripts/build.sh first`)
    const platformStage = join(stage, platform)
    mkdirSync(platformStage)
    for (const file of readdirSync(join(root, 'npm', platform))) {
      copyFileSync(join(root, 'npm', platform, file), join(platformStage, file))
    }
    copyFileSync(join(root, binary), join(platformStage, binary))
    const platformManifest = JSON.parse(readFileSync(join(platformStage, 'package.json'), 'utf8')) as Record<string, unknown>
    writeFileSync(join(platformStage, 'package.json'), JSON.stringify({ ...platformManifest, version }, null, 2) + '\n')
    const platformTarball = pack(platformStage, tarballs)

    // The root package: the files `npm pack` takes from the checkout, and
    // the manifest with the optional dependencies `napi pre-publish` adds.
    const [listing] = JSON.parse(npm(['pack', '--dry-run', '--json'], root)) as PackResult[]
    const rootStage = join(stage, 'root')
    for (const { path } of listing!.files) {
      mkdirSync(dirname(join(rootStage, path)), { recursive: true })
      copyFileSync(join(root, path), join(rootStage, path))
    }
    const optionalDependencies: Record<string, string> = { ...config.packageJson.optionalDependencies }
    for (const t of config.targets) optionalDependencies[`${config.packageName}-${t.platformArchABI}`] = version
    writeFileSync(join(rootStage, 'package.json'), JSON.stringify({ ...config.packageJson, optionalDependencies }, null, 2) + '\n')
    const rootTarball = pack(rootStage, tarballs)
    if (rootTarball.files.some((f) => f.path.endsWith('.node'))) {
      throw new Error(`${rootTarball.filename} holds a .node file: the addon must come from ${platformTarball.filename}`)
    }

    // The empty project: it asks for ublk-ts only; the binary package comes
    // through ublk-ts's optional dependency, pointed at its tarball.
    const platformPackage = `${config.packageName}-${platform}`
    writeFileSync(
      join(installDir, 'package.json'),
      JSON.stringify(
        {
          name: 'ublk-ts-packed-install',
          private: true,
          dependencies: { [config.packageName]: `file:tarballs/${rootTarball.filename}` },
          overrides: { [platformPackage]: `file:tarballs/${platformTarball.filename}` },
        },
        null,
        2,
      ) + '\n',
    )
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: pathWithoutToolchain() }
    for (const name of ['LIBCLANG_PATH', 'CARGO_HOME', 'RUSTUP_HOME', 'RUSTUP_TOOLCHAIN', 'CC', 'CXX']) delete env[name]
    npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], installDir, env)

    // What npm put where: the binary package under its optional-dependency edge.
    const ls = JSON.parse(npm(['ls', '--all', '--json'], installDir, env)) as {
      dependencies?: Record<string, { version: string; dependencies?: Record<string, { version: string }> }>
    }
    const installed = ls.dependencies?.[config.packageName]
    const binaryPackage = installed?.dependencies?.[platformPackage]
    if (installed?.version !== version || binaryPackage?.version !== version) {
      throw new Error(`npm ls in ${installDir} shows no ${config.packageName}@${version} with ${platformPackage}@${version} under it`)
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1)
    console.log(
      `packed ${rootTarball.filename} and ${platformTarball.filename}, installed into ${installDir} ` +
        `with PATH=${env.PATH} (no ${toolchain.join(', ')}): ${seconds} s`,
    )
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err)
  process.exit(1)
})
