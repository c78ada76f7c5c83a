// A null device written in TypeScript: every IO succeeds, nothing is kept.
//   ublk-ts serve examples/null.ts --size 1G --queues 2
import type { Target } from '../lib/index.ts'

const target: Target = {
  name: 'null-example',
  read() {},
  write() {},
  flush() {},
}
export default target
