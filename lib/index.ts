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
