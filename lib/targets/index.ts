export { loopTarget } from './loop.js'
export type { LoopOptions } from './loop.js'
export { nullTarget } from './null.js'
export { ramdiskTarget } from './ramdisk.js'
