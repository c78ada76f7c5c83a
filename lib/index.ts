export {
  createDevice,
  deleteDevice,
  Device,
  deviceInfo,
  kernelFeatures,
  listDevices,
} from './device.js'
export type { BuiltinTarget, DeviceInfo, DeviceOptions, KernelFeatures } from './device.js'
export { UblkError } from './errors.js'
export { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from './target.js'
export type { BackingFile, Io, IoOp, Target, TargetContext } from './target.js'
export { loopTarget, nullTarget, ramdiskTarget, withIoDelay } from './targets/index.js'
