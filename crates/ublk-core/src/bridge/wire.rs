//! What crosses between the queue threads and the application (the
//! JavaScript dispatcher), as flat tables of numbers: every field count,
//! op code, kind bit and flag is defined here once. The TypeScript side's
//! constants are generated from this module ([`typescript`], written to
//! `lib/wire.ts` by `crates/ublk-codegen`).
//!
//! Decoding checks every number on its own: a malformed request is refused
//! alone, with its errno, and never takes other requests with it.

use crate::error::{Error, Result};
use crate::js_numbers::{integer, u16_arg, u32_arg};
use crate::runtime::{io_flags, IoOp};

/// Numbers per IO handed over: tag, seq, op, flags, offset, length, batch
/// (or [`NO_BATCH`]), and for a routed read that failed, the file's handle
/// and the negative errno (0 and 0 otherwise).
pub const IO_FIELDS: usize = 9;
/// Numbers per IO result from the application: tag, seq, result.
pub const RESULT_FIELDS: usize = 3;
/// Numbers per backend request: id, kind, mode, file, tag, seq, bufOffset,
/// length, fileOffset. `mode` is the fallocate mode, or the RWF_* flags of
/// a read or write; `tag` is a staging buffer's handle with [`STAGING`].
pub const REQUEST_FIELDS: usize = 9;
/// Numbers per finished backend request: id, result.
pub const BACKEND_RESULT_FIELDS: usize = 2;
/// Numbers per event: kind, batch, count.
pub const EVENT_FIELDS: usize = 3;
/// The batch field of an IO that is in no write batch.
pub const NO_BATCH: f64 = -1.0;

/// Backend request kinds (the low byte of `kind`).
pub const KIND_READ: u32 = 0;
pub const KIND_WRITE: u32 = 1;
pub const KIND_FSYNC: u32 = 2;
pub const KIND_FDATASYNC: u32 = 3;
pub const KIND_FALLOCATE: u32 = 4;
/// Completes after `length` microseconds (an io_uring timeout).
pub const KIND_SLEEP: u32 = 5;
/// Bit in `kind`: the request completes its IO when done (a passthrough).
pub const COMPLETES_IO: u32 = 0x100;
/// Bit in `kind`, with [`COMPLETES_IO`]: the request's outcome is
/// answered (its bytes, or the errno), once every completing request of
/// its IO is done; if one failed, the application keeps the IO and answers
/// it.
pub const REPORT_FAILURE: u32 = 0x200;
/// Bit in `kind`: `tag` names a staging buffer.
pub const STAGING: u32 = 0x400;
/// Bit in `kind`: `tag` and `seq` name the IO the request belongs to.
pub const FOR_IO: u32 = 0x800;
const KIND_BITS: u32 = COMPLETES_IO | REPORT_FAILURE | STAGING | FOR_IO;

/// Event kinds: a write batch's IOs are in this hand-over (`count` of
/// them); every IO of a batch has completed; the device has stopped.
pub const EVENT_BATCH_OPEN: u32 = 1;
pub const EVENT_BATCH_DONE: u32 = 2;
pub const EVENT_STOPPED: u32 = 3;

/// Longest sleep a request may ask for, in microseconds.
pub const MAX_SLEEP_US: u32 = 60_000_000;

/// One IO handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    pub tag: u16,
    /// Changes every time the tag carries a new IO; a result must quote it.
    pub seq: u32,
    pub op: IoOp,
    /// `UBLK_IO_F_*` (see [`io_flags`]).
    pub flags: u32,
    pub offset: u64,
    pub length: u32,
    /// The write batch the IO is part of.
    pub batch: Option<u64>,
    /// A read or write a route sent to a file failed there.
    pub route_failure: Option<RouteFailure>,
}

/// Where and how a routed read or write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFailure {
    /// The backing file's handle.
    pub file: u32,
    /// Negative errno.
    pub error: i32,
}

/// Something the application is told besides IOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The IOs of write batch `batch` (`count` of them) are handed over:
    /// its prologue runs before any of them reaches its method.
    BatchOpen { batch: u64, count: u32 },
    /// Every IO of write batch `batch` has completed: its epilogue is due.
    BatchDone { batch: u64 },
    /// The device has stopped; nothing more will come.
    Stopped,
}

/// The application's result for one IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoResult {
    pub tag: u16,
    pub seq: u32,
    /// Bytes done, or a negative errno.
    pub result: i32,
}

/// What a backend request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// File into the buffer.
    Read,
    /// The buffer into the file.
    Write,
    Fsync,
    Fdatasync,
    /// `fallocate(2)` with this mode.
    Fallocate(i32),
    /// Completes after `length` microseconds.
    Sleep,
}

/// Whose memory a request reads into or writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTarget {
    /// The IO's buffer; also ties a request without memory to its IO.
    Io { tag: u16, seq: u32 },
    /// A staging buffer, by handle.
    Staging(u32),
    /// None: a request outside any IO that moves no data.
    Free,
}

/// A request to run on a queue's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRequest {
    /// The application's id for it, echoed with its result; 0 asks for no
    /// result.
    pub id: u32,
    pub kind: BackendKind,
    /// The backing file's handle (unused by a sleep).
    pub file: u32,
    pub target: RequestTarget,
    pub buf_offset: u32,
    pub length: u32,
    pub file_offset: u64,
    /// The IO is completed by the queue thread when this request finishes.
    pub completes_io: bool,
    /// With `completes_io`: its outcome is answered, and a failure leaves
    /// the IO to the application.
    pub report_failure: bool,
    /// `RWF_DSYNC` or `RWF_SYNC` for a read or write.
    pub rw_flags: i32,
}

/// A request that cannot run, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: u32,
    /// The IO it belongs to, if that much could be read.
    pub io: Option<(u16, u32)>,
    pub completes_io: bool,
    pub report_failure: bool,
    pub error: Error,
}

/// Appends the rows of `ios` to an IO table.
pub fn encode_ios(ios: &[IoRequest], table: &mut Vec<f64>) {
    table.reserve(ios.len() * IO_FIELDS);
    for io in ios {
        table.extend_from_slice(&[
            io.tag as f64,
            io.seq as f64,
            io.op.code() as f64,
            io.flags as f64,
            io.offset as f64,
            io.length as f64,
            io.batch.map_or(NO_BATCH, |b| b as f64),
            io.route_failure.map_or(0.0, |f| f.file as f64),
            io.route_failure.map_or(0.0, |f| f.error as f64),
        ]);
    }
}

/// Appends the rows of finished backend requests to a table.
pub fn encode_backend(results: &[(u32, i32)], table: &mut Vec<f64>) {
    table.reserve(results.len() * BACKEND_RESULT_FIELDS);
    for (id, result) in results {
        table.extend_from_slice(&[*id as f64, *result as f64]);
    }
}

/// Appends the rows of `events` to a table.
pub fn encode_events(events: &[Event], table: &mut Vec<f64>) {
    table.reserve(events.len() * EVENT_FIELDS);
    for event in events {
        table.extend_from_slice(&match *event {
            Event::BatchOpen { batch, count } => {
                [EVENT_BATCH_OPEN as f64, batch as f64, count as f64]
            }
            Event::BatchDone { batch } => [EVENT_BATCH_DONE as f64, batch as f64, 0.0],
            Event::Stopped => [EVENT_STOPPED as f64, 0.0, 0.0],
        });
    }
}

/// The first `count` rows of `fields` numbers of a table JavaScript
/// filled; EINVAL if `count` is not a whole number or the table is shorter.
pub fn rows<'a>(table: &'a [f64], count: f64, fields: usize, what: &str) -> Result<&'a [f64]> {
    let count = u32_arg(what, count)? as usize;
    table.get(..count * fields).ok_or_else(|| {
        Error::invalid(format!(
            "{count} {what} need {} numbers, the table holds {}",
            count * fields,
            table.len()
        ))
    })
}

fn check_rows(values: &[f64], fields: usize, what: &str) -> Result<()> {
    if values.len() % fields != 0 {
        return Err(Error::invalid(format!(
            "{what} must hold {fields} numbers per entry, got {}",
            values.len()
        )));
    }
    Ok(())
}

/// Decodes `[tag, seq, result]*`. A row whose result is not an integer
/// errno or byte count fails its IO with EIO; a row that names no IO at
/// all is dropped (nothing could be answered).
pub fn decode_results(values: &[f64]) -> Result<Vec<IoResult>> {
    check_rows(values, RESULT_FIELDS, "results")?;
    Ok(values
        .chunks_exact(RESULT_FIELDS)
        .filter_map(|r| {
            let tag = u16_arg("tag", r[0]).ok()?;
            let seq = u32_arg("seq", r[1]).ok()?;
            let result = r[2];
            let whole = result.is_finite() && result.fract() == 0.0;
            let result = if whole && result.abs() <= i32::MAX as f64 {
                result as i32
            } else {
                -libc::EIO
            };
            Some(IoResult { tag, seq, result })
        })
        .collect())
}

/// Decodes `[id, kind, mode, file, tag, seq, bufOffset, length,
/// fileOffset]*`, each request on its own.
pub fn decode_requests(
    values: &[f64],
) -> Result<Vec<std::result::Result<BackendRequest, Refused>>> {
    check_rows(values, REQUEST_FIELDS, "backend requests")?;
    Ok(values
        .chunks_exact(REQUEST_FIELDS)
        .map(decode_request)
        .collect())
}

fn decode_request(r: &[f64]) -> std::result::Result<BackendRequest, Refused> {
    let raw_kind = u32_arg("kind", r[1]).unwrap_or(0);
    let completes_io = raw_kind & COMPLETES_IO != 0;
    let report_failure = completes_io && raw_kind & REPORT_FAILURE != 0;
    let io = (raw_kind & FOR_IO != 0)
        .then(|| Some((u16_arg("tag", r[4]).ok()?, u32_arg("seq", r[5]).ok()?)))
        .flatten();
    let refuse = |error: Error| Refused {
        id: u32_arg("id", r[0]).unwrap_or(0),
        io,
        completes_io,
        report_failure,
        error,
    };
    let request = || -> Result<BackendRequest> {
        let id = u32_arg("id", r[0])?;
        let raw_kind = u32_arg("kind", r[1])?;
        let kind = match raw_kind & !KIND_BITS {
            KIND_READ => BackendKind::Read,
            KIND_WRITE => BackendKind::Write,
            KIND_FSYNC => BackendKind::Fsync,
            KIND_FDATASYNC => BackendKind::Fdatasync,
            KIND_FALLOCATE => BackendKind::Fallocate(u32_arg("mode", r[2])? as i32),
            KIND_SLEEP => BackendKind::Sleep,
            k => return Err(Error::invalid(format!("unknown backend op {k}"))),
        };
        let target = match (raw_kind & STAGING != 0, raw_kind & FOR_IO != 0) {
            (true, true) => {
                return Err(Error::invalid(
                    "a request names a staging buffer or an IO, not both",
                ))
            }
            (true, false) => RequestTarget::Staging(u32_arg("staging buffer", r[4])?),
            (false, true) => RequestTarget::Io {
                tag: u16_arg("tag", r[4])?,
                seq: u32_arg("seq", r[5])?,
            },
            (false, false) => RequestTarget::Free,
        };
        let moves_data = matches!(kind, BackendKind::Read | BackendKind::Write);
        if moves_data && target == RequestTarget::Free {
            return Err(Error::invalid(
                "a read or write needs an IO's or a staging buffer",
            ));
        }
        if completes_io && !(moves_data && matches!(target, RequestTarget::Io { .. })) {
            return Err(Error::invalid(
                "only a read or write of an IO's buffer can complete it",
            ));
        }
        let length = u32_arg("length", r[7])?;
        if kind == BackendKind::Sleep && length > MAX_SLEEP_US {
            return Err(Error::invalid(format!(
                "a sleep of {length} µs is longer than {MAX_SLEEP_US} µs"
            )));
        }
        Ok(BackendRequest {
            id,
            kind,
            file: u32_arg("file", r[3])?,
            target,
            buf_offset: u32_arg("bufOffset", r[6])?,
            length,
            file_offset: integer("fileOffset", r[8], i64::MAX as u64)?,
            completes_io,
            report_failure,
            rw_flags: if moves_data {
                u32_arg("mode", r[2])? as i32
            } else {
                0
            },
        })
    };
    request().map_err(refuse)
}

/// The TypeScript module with these constants (`lib/wire.ts`).
pub fn typescript() -> String {
    let consts: &[(&str, f64, &str)] = &[
        ("IO_FIELDS", IO_FIELDS as f64, "Numbers per IO handed over: tag, seq, op, flags, offset, length, batch, failed file, failed errno."),
        ("RESULT_FIELDS", RESULT_FIELDS as f64, "Numbers per IO result: tag, seq, result."),
        ("REQUEST_FIELDS", REQUEST_FIELDS as f64, "Numbers per backend request: id, kind, mode, file, tag, seq, bufOffset, length, fileOffset."),
        ("BACKEND_RESULT_FIELDS", BACKEND_RESULT_FIELDS as f64, "Numbers per finished backend request: id, result."),
        ("EVENT_FIELDS", EVENT_FIELDS as f64, "Numbers per event: kind, batch, count."),
        ("NO_BATCH", NO_BATCH, "The batch field of an IO in no write batch."),
        ("OP_READ", IoOp::Read.code() as f64, "UBLK_IO_OP_READ"),
        ("OP_WRITE", IoOp::Write.code() as f64, "UBLK_IO_OP_WRITE"),
        ("OP_FLUSH", IoOp::Flush.code() as f64, "UBLK_IO_OP_FLUSH"),
        ("OP_DISCARD", IoOp::Discard.code() as f64, "UBLK_IO_OP_DISCARD"),
        ("OP_WRITE_ZEROES", IoOp::WriteZeroes.code() as f64, "UBLK_IO_OP_WRITE_ZEROES"),
        ("FLAG_FUA", io_flags::FUA as f64, "UBLK_IO_F_FUA, in an IO's flags field."),
        ("KIND_READ", KIND_READ as f64, "Backend request: file into buffer."),
        ("KIND_WRITE", KIND_WRITE as f64, "Backend request: buffer into file."),
        ("KIND_FSYNC", KIND_FSYNC as f64, "Backend request: fsync."),
        ("KIND_FDATASYNC", KIND_FDATASYNC as f64, "Backend request: fdatasync."),
        ("KIND_FALLOCATE", KIND_FALLOCATE as f64, "Backend request: fallocate with mode."),
        ("KIND_SLEEP", KIND_SLEEP as f64, "Backend request: an io_uring timeout of length microseconds."),
        ("COMPLETES_IO", COMPLETES_IO as f64, "Kind bit: the queue thread completes the IO when the request ends."),
        ("REPORT_FAILURE", REPORT_FAILURE as f64, "Kind bit: a completing request's outcome is answered once all of its IO's are done; a failure leaves the IO to the application."),
        ("STAGING", STAGING as f64, "Kind bit: the tag field is a staging buffer's handle."),
        ("FOR_IO", FOR_IO as f64, "Kind bit: tag and seq name the request's IO."),
        ("EVENT_BATCH_OPEN", EVENT_BATCH_OPEN as f64, "Event: a write batch's IOs are handed over."),
        ("EVENT_BATCH_DONE", EVENT_BATCH_DONE as f64, "Event: every IO of a write batch completed."),
        ("EVENT_STOPPED", EVENT_STOPPED as f64, "Event: the device stopped."),
        ("MAX_SLEEP_US", MAX_SLEEP_US as f64, "Longest sleep a request may ask for, in microseconds."),
        ("RWF_DSYNC", libc::RWF_DSYNC as f64, "A durable write."),
    ];
    let mut ts = String::from(
        "// Generated from crates/ublk-core/src/bridge/wire.rs by crates/ublk-codegen:\n\
         // do not edit. `npm run build` regenerates it; `npm test` fails if it drifts.\n",
    );
    for (name, value, doc) in consts {
        ts.push_str(&format!("\n/** {doc} */\nexport const {name} = {value}\n"));
    }
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        kind: u32,
        file: f64,
        tag: f64,
        length: f64,
        file_offset: f64,
    ) -> [f64; REQUEST_FIELDS] {
        [
            7.0,
            kind as f64,
            0.0,
            file,
            tag,
            3.0,
            0.0,
            length,
            file_offset,
        ]
    }

    #[test]
    fn ios_and_events_encode_field_by_field() {
        let mut table = Vec::new();
        let io = IoRequest {
            tag: 2,
            seq: 9,
            op: IoOp::Write,
            flags: io_flags::FUA,
            offset: 1 << 40,
            length: 4096,
            batch: Some(5),
            route_failure: None,
        };
        let failed = IoRequest {
            op: IoOp::Read,
            batch: None,
            route_failure: Some(RouteFailure {
                file: 17,
                error: -libc::EIO,
            }),
            ..io
        };
        encode_ios(&[io, failed], &mut table);
        assert_eq!(table.len(), 2 * IO_FIELDS);
        assert_eq!(
            &table[..IO_FIELDS],
            &[
                2.0,
                9.0,
                1.0,
                io_flags::FUA as f64,
                (1u64 << 40) as f64,
                4096.0,
                5.0,
                0.0,
                0.0
            ]
        );
        assert_eq!(
            &table[IO_FIELDS + 6..],
            &[NO_BATCH, 17.0, -libc::EIO as f64]
        );
        let mut events = Vec::new();
        encode_events(
            &[
                Event::BatchOpen { batch: 4, count: 2 },
                Event::BatchDone { batch: 4 },
                Event::Stopped,
            ],
            &mut events,
        );
        assert_eq!(events, vec![1.0, 4.0, 2.0, 2.0, 4.0, 0.0, 3.0, 0.0, 0.0]);
        let mut backend = vec![7.0];
        encode_backend(&[(3, -5)], &mut backend);
        assert_eq!(backend, vec![7.0, 3.0, -5.0], "rows are appended");
    }

    #[test]
    fn results_are_checked_row_by_row() {
        let rows = [1.0, 2.0, 4096.0, 1.0, 3.0, 0.5, 70000.0, 1.0, 0.0];
        let results = decode_results(&rows).unwrap();
        assert_eq!(results.len(), 2, "the row naming tag 70000 is dropped");
        assert_eq!(results[0].result, 4096);
        assert_eq!(
            results[1].result,
            -libc::EIO,
            "a fractional result fails its IO"
        );
        assert_eq!(decode_results(&[1.0, 2.0]).unwrap_err().code(), "EINVAL");
    }

    #[test]
    fn each_request_is_refused_alone_with_what_is_known_of_it() {
        let good = request(KIND_READ | FOR_IO | COMPLETES_IO, 5.0, 1.0, 4096.0, 0.0);
        let bad_offsets = [-4096.0, 2f64.powi(63), f64::NAN];
        let mut rows = good.to_vec();
        for offset in bad_offsets {
            rows.extend(request(
                KIND_READ | FOR_IO | COMPLETES_IO,
                5.0,
                1.0,
                4096.0,
                offset,
            ));
        }
        rows.extend(request(
            KIND_SLEEP,
            0.0,
            0.0,
            (MAX_SLEEP_US + 1) as f64,
            0.0,
        ));
        rows.extend(request(9, 5.0, 0.0, 0.0, 0.0));
        rows.extend(request(KIND_READ, 5.0, 0.0, 4096.0, 0.0));
        rows.extend(request(
            KIND_FSYNC | COMPLETES_IO | FOR_IO,
            5.0,
            1.0,
            0.0,
            0.0,
        ));
        rows.extend(request(KIND_READ | STAGING | FOR_IO, 5.0, 1.0, 4096.0, 0.0));
        let decoded = decode_requests(&rows).unwrap();
        let ok = decoded[0].as_ref().unwrap();
        assert_eq!(ok.target, RequestTarget::Io { tag: 1, seq: 3 });
        assert!(ok.completes_io && !ok.report_failure);
        for refused in &decoded[1..4] {
            let refused = refused.as_ref().unwrap_err();
            assert_eq!(refused.error.code(), "EINVAL");
            assert_eq!(
                (refused.id, refused.io, refused.completes_io),
                (7, Some((1, 3)), true)
            );
        }
        for (i, refused) in decoded[4..].iter().enumerate() {
            let refused = refused.as_ref().unwrap_err();
            assert_eq!(refused.error.code(), "EINVAL", "row {}", i + 4);
        }
        assert_eq!(decode_requests(&rows[..8]).unwrap_err().code(), "EINVAL");
    }

    #[test]
    fn the_typescript_module_names_every_constant() {
        let ts = typescript();
        assert!(ts.contains("export const IO_FIELDS = 9\n"));
        assert!(ts.contains("export const FOR_IO = 2048\n"));
        assert!(ts.contains("export const NO_BATCH = -1\n"));
        assert!(ts.contains(&format!("export const FLAG_FUA = {}\n", io_flags::FUA)));
    }
}
