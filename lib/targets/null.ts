import type { Target } from '../target.js'

/** Stores nothing: reads leave the data as it is, writes are dropped. */
export function nullTarget(): Target {
  return {
    name: 'null-ts',
    zeroCopy: true,
    read() {},
    write() {},
    flush() {},
    discard() {},
    writeZeroes() {},
  }
}

/** As a target module (`{ module: require.resolve('ublk-ts/lib/targets/null.js') }`), for worker threads. */
export default nullTarget
