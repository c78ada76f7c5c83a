//! Where a device's counters live: a `MAP_SHARED` file under
//! [`STATS_DIR`] that other processes map read-only
//! ([`read_published`]), or anonymous memory when that directory cannot be
//! written.
//!
//! The serving process holds an exclusive `flock` on its file for as long
//! as it serves; a reader that can take a shared lock knows the file was
//! left behind by a process that died, and reports the device as not
//! served.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::counters::{QueueCounters, BUCKETS, ERRNOS, OPS};
use super::mapping::{fstat, open, os_error, Mapping};
use super::DeviceStats;
use crate::error::{Error, Result};

/// Where serving processes publish their devices' counters.
pub const STATS_DIR: &str = "/run/ublk-ts";
const MAGIC: u64 = u64::from_le_bytes(*b"UBLKSTAT");
const VERSION: u32 = 1;
/// The header has a page to itself; queue blocks follow.
const HEADER_BYTES: usize = 4096;

/// The first page of the region: what a reader checks before it trusts
/// the layout.
#[repr(C)]
struct Header {
    /// Written last, once everything else is.
    magic: AtomicU64,
    version: AtomicU32,
    dev_id: AtomicU32,
    pid: AtomicU32,
    queues: AtomicU32,
    queue_bytes: AtomicU32,
    ops: AtomicU32,
    buckets: AtomicU32,
    errnos: AtomicU32,
}

/// The path of device `id`'s counters in `dir`.
pub fn stats_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("ublk{id}.stats"))
}

impl Mapping {
    fn header(&self) -> &Header {
        // SAFETY: the mapping is page aligned and at least HEADER_BYTES
        // long, and a Header is atomics only, valid as all zeros.
        unsafe { &*(self.ptr() as *const Header) }
    }

    /// Queue `qid`'s block; the caller checked the mapping holds it.
    fn queue(&self, qid: usize) -> &QueueCounters {
        let offset = HEADER_BYTES + qid * std::mem::size_of::<QueueCounters>();
        assert!(offset + std::mem::size_of::<QueueCounters>() <= self.len());
        // SAFETY: in bounds (checked above), aligned (a page plus a
        // multiple of the block's size, itself a multiple of its
        // alignment), and atomics only, valid as all zeros. Blocks mapped
        // read-only are only loaded from, with relaxed loads no wider
        // than a pointer, which read-only memory allows.
        unsafe { &*(self.ptr().add(offset) as *const QueueCounters) }
    }
}

fn region_len(queues: u16) -> usize {
    HEADER_BYTES + queues as usize * std::mem::size_of::<QueueCounters>()
}

/// A device's counters, written by its queue threads.
pub(crate) struct StatsRegion {
    map: Mapping,
    queues: u16,
    /// The published file, locked, until the device stops.
    file: Mutex<Option<(OwnedFd, PathBuf)>>,
}

impl StatsRegion {
    /// Counters for device `id`, published under [`STATS_DIR`] if it can
    /// be written (anonymous otherwise, with a warning).
    pub fn create(id: u32, queues: u16) -> Result<StatsRegion> {
        StatsRegion::create_in(Path::new(STATS_DIR), id, queues).or_else(|e| {
            log::warn!("device stats not published for other processes: {e}");
            StatsRegion::anonymous(id, queues)
        })
    }

    pub fn anonymous(id: u32, queues: u16) -> Result<StatsRegion> {
        let map = Mapping::new(None, region_len(queues), true)?;
        let region = StatsRegion {
            map,
            queues,
            file: Mutex::new(None),
        };
        write_header(&region.map, id, queues);
        Ok(region)
    }

    pub fn create_in(dir: &Path, id: u32, queues: u16) -> Result<StatsRegion> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::from(e).context(format!("create {}", dir.display())))?;
        let path = stats_path(dir, id);
        // Made apart and renamed into place whole and locked, so a reader
        // never sees it half made.
        let tmp = dir.join(format!(".ublk{id}.stats.{}", std::process::id()));
        let fd = open(&tmp, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
        let made = (|| {
            // SAFETY: an fd we own.
            if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(os_error("lock device stats"));
            }
            let len = region_len(queues);
            // SAFETY: an fd we own.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
                return Err(os_error("size device stats"));
            }
            let map = Mapping::new(Some(&fd), len, true)?;
            write_header(&map, id, queues);
            std::fs::rename(&tmp, &path)
                .map_err(|e| Error::from(e).context(format!("publish {}", path.display())))?;
            Ok(map)
        })();
        let map = match made {
            Ok(map) => map,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let region = StatsRegion {
            map,
            queues,
            file: Mutex::new(Some((fd, path))),
        };
        Ok(region)
    }

    /// Queue `qid`'s counters.
    pub fn queue(&self, qid: u16) -> &QueueCounters {
        assert!(qid < self.queues);
        self.map.queue(qid as usize)
    }

    pub fn snapshot(&self) -> DeviceStats {
        snapshot(&self.map)
    }

    /// Whether other processes can read these counters.
    #[cfg(test)]
    pub fn is_published(&self) -> bool {
        self.file.lock().unwrap().is_some()
    }

    /// The device stopped: removes the file (unless a new server of the
    /// device has replaced it) and lets go of it. The counters stay
    /// readable in this process.
    pub fn unpublish(&self) {
        let Some((fd, path)) = self.file.lock().unwrap().take() else {
            return;
        };
        let ours = match (std::fs::metadata(&path), fstat(&fd)) {
            (Ok(m), Ok(st)) => {
                use std::os::unix::fs::MetadataExt;
                m.dev() == st.st_dev && m.ino() == st.st_ino
            }
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Drop for StatsRegion {
    fn drop(&mut self) {
        self.unpublish();
    }
}

/// Fills in the header; the magic last, so a reader never trusts a half-written one.
fn write_header(map: &Mapping, id: u32, queues: u16) {
    let h = map.header();
    h.version.store(VERSION, Ordering::Relaxed);
    h.dev_id.store(id, Ordering::Relaxed);
    h.pid.store(std::process::id(), Ordering::Relaxed);
    h.queues.store(queues as u32, Ordering::Relaxed);
    h.queue_bytes.store(
        std::mem::size_of::<QueueCounters>() as u32,
        Ordering::Relaxed,
    );
    h.ops.store(OPS as u32, Ordering::Relaxed);
    h.buckets.store(BUCKETS as u32, Ordering::Relaxed);
    h.errnos.store(ERRNOS as u32, Ordering::Relaxed);
    h.magic.store(MAGIC, Ordering::Release);
}

fn snapshot(map: &Mapping) -> DeviceStats {
    let h = map.header();
    let queues = h.queues.load(Ordering::Relaxed);
    DeviceStats {
        id: h.dev_id.load(Ordering::Relaxed),
        pid: h.pid.load(Ordering::Relaxed),
        queues: (0..queues as usize)
            .map(|q| map.queue(q).snapshot())
            .collect(),
    }
}

/// Device `id`'s counters, as the process serving it publishes them.
/// `ENODEV` if no live ublk-ts process serves it.
pub fn read_published(id: u32) -> Result<DeviceStats> {
    read_published_in(Path::new(STATS_DIR), id)
}

pub(crate) fn read_published_in(dir: &Path, id: u32) -> Result<DeviceStats> {
    let path = stats_path(dir, id);
    let not_served = |why: &str| {
        Error::new(
            libc::ENODEV,
            format!("ublk device {id} is not served by a ublk-ts process ({why})"),
        )
    };
    let fd = match open(&path, libc::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(e) if e.errno() == libc::ENOENT => {
            return Err(not_served(&format!("no {}", path.display())))
        }
        Err(e) => return Err(e),
    };
    // SAFETY: an fd we own; the shared lock is dropped with it.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Err(not_served("the process that served it has ended"));
    }
    let len = fstat(&fd)?.st_size as usize;
    if len < HEADER_BYTES {
        return Err(not_served("its stats file is incomplete"));
    }
    let map = Mapping::new(Some(&fd), len, false)?;
    let h = map.header();
    let layout = (
        h.version.load(Ordering::Relaxed),
        h.queue_bytes.load(Ordering::Relaxed) as usize,
        h.ops.load(Ordering::Relaxed) as usize,
        h.buckets.load(Ordering::Relaxed) as usize,
        h.errnos.load(Ordering::Relaxed) as usize,
    );
    let expected = (
        VERSION,
        std::mem::size_of::<QueueCounters>(),
        OPS,
        BUCKETS,
        ERRNOS,
    );
    if h.magic.load(Ordering::Acquire) != MAGIC || layout != expected {
        return Err(Error::new(
            libc::EPROTO,
            format!(
                "{} has another layout (another ublk-ts version?)",
                path.display()
            ),
        ));
    }
    let queues = h.queues.load(Ordering::Relaxed);
    if region_len(queues.min(u16::MAX as u32) as u16) > len || queues > u16::MAX as u32 {
        return Err(not_served("its stats file is incomplete"));
    }
    Ok(snapshot(&map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::IoOp;
    use std::time::Duration;

    #[test]
    fn another_process_reads_what_the_queues_count() {
        let dir = tempfile::tempdir().unwrap();
        let region = StatsRegion::create_in(dir.path(), 7, 2).unwrap();
        assert!(region.is_published());
        region
            .queue(1)
            .record(IoOp::Write, 4096, 4096, Duration::from_micros(3));
        region
            .queue(0)
            .record(IoOp::Read, 4096, -libc::EIO, Duration::from_micros(3));
        // The lock is per open file: a second open stands for a reader in
        // another process.
        let read = read_published_in(dir.path(), 7).unwrap();
        assert_eq!((read.id, read.pid), (7, std::process::id()));
        assert_eq!(read.queues.len(), 2);
        assert_eq!(read.queues[1].op(IoOp::Write).bytes, 4096);
        assert_eq!(read.total().errnos[libc::EIO as usize], 1);
        assert_eq!(read, region.snapshot());

        region.unpublish();
        let gone = read_published_in(dir.path(), 7).unwrap_err();
        assert_eq!(gone.errno(), libc::ENODEV);
        assert_eq!(region.snapshot().total().ios(), 2, "still readable here");
        let never = read_published_in(dir.path(), 8).unwrap_err();
        assert_eq!(never.errno(), libc::ENODEV);
    }

    #[test]
    fn a_file_left_by_a_dead_server_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let region = StatsRegion::create_in(dir.path(), 3, 1).unwrap();
        // What a crash leaves: the file, without its lock (held by the fd
        // and the mapping alike).
        let (fd, _) = region.file.lock().unwrap().take().unwrap();
        drop((fd, region));
        let e = read_published_in(dir.path(), 3).unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV);
        assert!(e.to_string().contains("has ended"), "{e}");
        // A new server replaces it, and its file is not removed by the old one.
        let old = StatsRegion::create_in(dir.path(), 4, 1).unwrap();
        let new = StatsRegion::create_in(dir.path(), 4, 1).unwrap();
        old.unpublish();
        assert!(read_published_in(dir.path(), 4).is_ok());
        drop(new);
        assert!(read_published_in(dir.path(), 4).is_err());
    }

    #[test]
    fn anonymous_counters_work_without_a_file() {
        let region = StatsRegion::anonymous(1, 3).unwrap();
        assert!(!region.is_published());
        region
            .queue(2)
            .record(IoOp::Flush, 0, 0, Duration::from_micros(3));
        let s = region.snapshot();
        assert_eq!((s.queues.len(), s.total().op(IoOp::Flush).ios), (3, 1));
    }
}
