export {
  createDevice,
  deleteDevice,
  Device,
  deviceInfo,
  kernelFeatures,
  listDevices,
  recoverDevice,
  waitRecoverable,
  claimRecovery,
} from './device.js'
export type { BuiltinTarget, DeviceEvents, DeviceInfo, DeviceOptions, KernelFeatures, RecoverOptions, RecoveryClaim, Recovery, TargetModule } from './device.js'
export { UblkError } from './errors.js'
export { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from './target.js'
export type {
  BackingFile,
  CloseReason,
  FailedRead,
  FailedTransfer,
  Io,
  IoOp,
  PrimaryTarget,
  ReadErrorHandler,
  ReadRoute,
  StagedIoOptions,
  StagingBuffer,
  Target,
  TargetContext,
  WriteErrorHandler,
  WriteGate,
  WriteRoute,
} from './target.js'
export { loopTarget, nullTarget, ramdiskTarget, withIoDelay } from './targets/index.js'
export { assembleRaid1, createRaid1, Raid1Array } from './raid1/index.js'
export type {
  AssembleRaid1Options,
  Raid1Events,
  CreateRaid1Options,
  MemberStatus,
  Raid1State,
  Raid1Status,
  ResyncKind,
  ResyncProgress,
  ResyncSpeed,
  SlotState,
} from './raid1/index.js'
export { formatSize, parseSize } from './size.js'
export { deviceStats, latencyBucketBounds, startMetricsServer } from './metrics/index.js'
export type { DeviceStats, DispatchStats, MetricsServer, MetricsServerOptions, OpStats, QueueStats } from './metrics/index.js'
export { cow, delay, error, FILTER_NAMES, log, offset, parseFilter, rate, readonly, stats, withFilters } from './filters/index.js'
export type {
  CowOptions,
  DelayOptions,
  ErrorOptions,
  Filter,
  LogOptions,
  OffsetOptions,
  OpTally,
  RateOptions,
  StatsFilter,
  StatsOptions,
  Tallies,
} from './filters/index.js'
export type { DeviceGeometry, TargetArgs, TargetFactory } from './target-module.js'
