// Generated from crates/ublk-core/src/bridge/wire.rs by crates/ublk-codegen:
// do not edit. `npm run build` regenerates it; `npm test` fails if it drifts.

/** Numbers per IO handed over: tag, seq, op, flags, offset, length, batch, failed file, failed errno. */
export const IO_FIELDS = 9

/** Numbers per IO result: tag, seq, result. */
export const RESULT_FIELDS = 3

/** Numbers per backend request: id, kind, mode, file, tag, seq, bufOffset, length, fileOffset. */
export const REQUEST_FIELDS = 9

/** Numbers per finished backend request: id, result. */
export const BACKEND_RESULT_FIELDS = 2

/** Numbers per event: kind, batch, count. */
export const EVENT_FIELDS = 3

/** The batch field of an IO in no write batch. */
export const NO_BATCH = -1

/** UBLK_IO_OP_READ */
export const OP_READ = 0

/** UBLK_IO_OP_WRITE */
export const OP_WRITE = 1

/** UBLK_IO_OP_FLUSH */
export const OP_FLUSH = 2

/** UBLK_IO_OP_DISCARD */
export const OP_DISCARD = 3

/** UBLK_IO_OP_WRITE_ZEROES */
export const OP_WRITE_ZEROES = 5

/** UBLK_IO_F_FUA, in an IO's flags field. */
export const FLAG_FUA = 32

/** Backend request: file into buffer. */
export const KIND_READ = 0

/** Backend request: buffer into file. */
export const KIND_WRITE = 1

/** Backend request: fsync. */
export const KIND_FSYNC = 2

/** Backend request: fdatasync. */
export const KIND_FDATASYNC = 3

/** Backend request: fallocate with mode. */
export const KIND_FALLOCATE = 4

/** Backend request: an io_uring timeout of length microseconds. */
export const KIND_SLEEP = 5

/** Kind bit: the queue thread completes the IO when the request ends. */
export const COMPLETES_IO = 256

/** Kind bit: a completing request's outcome is answered once all of its IO's are done; a failure leaves the IO to the application. */
export const REPORT_FAILURE = 512

/** Kind bit: the tag field is a staging buffer's handle. */
export const STAGING = 1024

/** Kind bit: tag and seq name the request's IO. */
export const FOR_IO = 2048

/** Event: a write batch's IOs are handed over. */
export const EVENT_BATCH_OPEN = 1

/** Event: every IO of a write batch completed. */
export const EVENT_BATCH_DONE = 2

/** Event: the device stopped. */
export const EVENT_STOPPED = 3

/** Longest sleep a request may ask for, in microseconds. */
export const MAX_SLEEP_US = 60000000

/** A durable write. */
export const RWF_DSYNC = 2
