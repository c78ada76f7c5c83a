//! A loop device with a write-ahead intent journal, written as a
//! [`Target`] with the batch hooks: the batch prologue appends one record naming every
//! extent the batch will write and makes it durable with one write; the
//! data writes follow; the epilogue appends the batch's end record.
//! After a crash, the data file can only differ from what it held before
//! inside extents of batches that began and did not end.
//!
//! ```text
//! journaled_loop DATA JOURNAL [--io-delay-us N] [--queues N] [--depth N]
//! ```
//! Prints `{"device": ...}` once the device is up, serves until standard
//! input closes, then prints the hook's counters as one JSON line.
//!
//! Journal lines: `B <queue>.<batch> <offset>+<len> ...` and
//! `E <queue>.<batch>`.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ublk_core::files::BackingFile;
use ublk_core::runtime::ops;
use ublk_core::{Capabilities, Device, DeviceOptions, Error, QueueContext, Target};
use ublk_core::{Io, IoOp, Result, WriteBatch};

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    batches: AtomicU64,
    epilogues: AtomicU64,
}

struct JournaledLoop {
    data: Arc<BackingFile>,
    journal: Arc<BackingFile>,
    /// Where the next journal record goes.
    journal_end: AtomicU64,
    counters: Arc<Counters>,
}

impl JournaledLoop {
    /// Appends `record` to the journal; with `durable`, it is on stable
    /// storage when this returns.
    async fn append(&self, record: String, durable: bool) -> Result<()> {
        let bytes = record.into_bytes().into_boxed_slice();
        let len = bytes.len();
        let at = self.journal_end.fetch_add(len as u64, Ordering::Relaxed);
        let flags = if durable { libc::RWF_DSYNC } else { 0 };
        match ops::write_owned(&self.journal, at, bytes, flags)?.await {
            n if n == len as i32 => Ok(()),
            n if n < 0 => Err(Error::new(-n, "journal write failed")),
            _ => Err(Error::new(libc::EIO, "short journal write")),
        }
    }
}

impl Target for JournaledLoop {
    type Queue = ();

    fn kind(&self) -> &str {
        "journaled-loop"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            fua: true,
            zero_copy: true,
            ..Capabilities::default()
        }
    }

    fn open_queue(&self, _queue: &QueueContext) -> Result<()> {
        Ok(())
    }

    async fn handle_io(&self, _queue: &(), io: Io<'_>) -> i32 {
        let data = &self.data;
        let op = match io.op {
            IoOp::Read => io.read_into(data, io.offset, 0, io.len),
            IoOp::Write => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                let flags = if io.fua { libc::RWF_DSYNC } else { 0 };
                io.write_from(data, io.offset, 0, io.len, flags)
            }
            IoOp::Flush => ops::fsync(data, true),
            _ => return -libc::EOPNOTSUPP,
        };
        match op {
            Ok(op) => match op.await {
                n if n < 0 => n,
                _ => io.done(),
            },
            Err(e) => -e.errno(),
        }
    }

    async fn before_writes(&self, _queue: &(), batch: &WriteBatch) -> Result<()> {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let mut record = format!("B {}.{}", batch.qid(), batch.seq());
        for w in batch.extents() {
            record.push_str(&format!(" {}+{}", w.offset, w.len));
        }
        record.push('\n');
        self.append(record, true).await
    }

    async fn after_writes(&self, _queue: &(), batch: &WriteBatch) {
        self.counters.epilogues.fetch_add(1, Ordering::Relaxed);
        let record = format!("E {}.{}\n", batch.qid(), batch.seq());
        if let Err(e) = self.append(record, false).await {
            eprintln!("journal end record: {e}");
        }
    }
}

struct Args {
    data: String,
    journal: String,
    io_delay: Option<Duration>,
    queues: u16,
    depth: u16,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut positional = Vec::new();
    let mut args = Args {
        data: String::new(),
        journal: String::new(),
        io_delay: None,
        queues: 1,
        depth: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--io-delay-us" => args.io_delay = Some(Duration::from_micros(value(&arg)?)),
            "--queues" => args.queues = value(&arg)? as u16,
            "--depth" => args.depth = value(&arg)? as u16,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => positional.push(arg),
        }
    }
    match <[String; 2]>::try_from(positional) {
        Ok([data, journal]) => Ok(Args {
            data,
            journal,
            ..args
        }),
        Err(_) => Err(
            "usage: journaled_loop DATA JOURNAL [--io-delay-us N] [--queues N] [--depth N]".into(),
        ),
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if let Err(e) = run(args) {
        eprintln!("journaled_loop: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let data = Arc::new(BackingFile::open(&args.data, true, false)?);
    let journal = Arc::new(BackingFile::open(&args.journal, false, false)?);
    let counters = Arc::new(Counters::default());
    let target = JournaledLoop {
        journal_end: AtomicU64::new(journal.size),
        data: data.clone(),
        journal,
        counters: counters.clone(),
    };
    let opts = DeviceOptions {
        size: data.size & !4095,
        queues: args.queues,
        depth: args.depth,
        io_delay: args.io_delay,
        ..Default::default()
    };
    let device = Device::create(&opts, target)?;
    println!("{{\"device\": \"{}\"}}", device.block_path());

    // Serve until whoever started us closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    device.stop()?;
    println!(
        "{{\"writes\": {}, \"batches\": {}, \"epilogues\": {}}}",
        counters.writes.load(Ordering::Relaxed),
        counters.batches.load(Ordering::Relaxed),
        counters.epilogues.load(Ordering::Relaxed)
    );
    Ok(())
}
