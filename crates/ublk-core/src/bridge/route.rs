//! Reads and writes the queue threads serve without the application.
//!
//! The application names backing files and how device offsets map onto
//! them; from then on a read is sent straight to one of those files from
//! the queue thread, and the IO completes when the read does, with no trip
//! through the application. A write route does the same for writes, to
//! one file. An IO that fails there is handed to the application like any
//! other IO, with the failure attached, so it can be served from elsewhere
//! or failed. A write route may mirror each write to several files, and
//! may be gated (see [`super::gate`]): then it takes only writes to chunks
//! the application opened. Mirrors and loop-like targets get the speed of
//! a Rust target this way, and keep their policy in the application: it
//! changes or removes a route whenever its state changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::gate::WriteGate;
use crate::error::{Error, Result};
use crate::files::{BackingFile, BackingFiles};
use crate::runtime::ops::Issue;

/// Most files a route spreads reads over.
pub const MAX_ROUTE_FILES: usize = 64;

/// How reads map onto backing files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRoute {
    /// Handles from [`BackingFiles::open`]. Region `r` of the device (see
    /// `stripe_bytes`) is read from `files[r % files.len()]`.
    pub files: Vec<u32>,
    /// Added to the device offset to get the offset in the file.
    pub file_offset: u64,
    /// Size of the regions reads alternate by: a power of two, at least
    /// 4 KiB.
    pub stripe_bytes: u64,
}

/// How writes map onto backing files: every write goes to each of `files`
/// at `file_offset` plus the device offset, and completes when every copy
/// landed. An ungated route is not for a target with batch hooks, which
/// must see every write; a gated one takes only writes to chunks the
/// application opened in the device's [`WriteGate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRoute {
    /// Handles from [`BackingFiles::open`].
    pub files: Vec<u32>,
    pub file_offset: u64,
    pub gated: bool,
    /// Run the copies on io_uring's worker threads (see [`Issue::Worker`]).
    pub offload: bool,
}

/// A checked write route, holding its files open.
pub(crate) struct ResolvedWrite {
    pub files: Vec<(u32, Arc<BackingFile>)>,
    pub file_offset: u64,
    pub gate: Option<Arc<WriteGate>>,
    pub issue: Issue,
}

/// A checked route, holding its files open.
pub(crate) struct ResolvedRoute {
    files: Vec<(u32, Arc<BackingFile>)>,
    pub file_offset: u64,
    stripe_shift: u32,
}

impl ResolvedRoute {
    /// The file (handle and file) a read at device offset `offset` goes to.
    pub fn pick(&self, offset: u64) -> &(u32, Arc<BackingFile>) {
        let region = offset >> self.stripe_shift;
        &self.files[(region % self.files.len() as u64) as usize]
    }
}

/// The routes in force.
#[derive(Default, Clone)]
pub(crate) struct Routes {
    pub read: Option<Arc<ResolvedRoute>>,
    pub write: Option<Arc<ResolvedWrite>>,
}

/// The routes every queue of a device uses, and how many IOs they served.
#[derive(Default)]
pub(crate) struct RouteTable {
    /// Bumped by every change, so queue threads re-read the routes only
    /// when they changed.
    generation: AtomicU64,
    current: Mutex<Routes>,
    gate: Mutex<Option<Arc<WriteGate>>>,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A queue thread's copy of the routes.
#[derive(Default)]
pub(crate) struct RouteCache {
    generation: u64,
    routes: Routes,
}

impl RouteTable {
    /// Replaces the read route (`None` sends every read to the
    /// application). Reads that reach a queue after this returns use the
    /// new route.
    pub fn set(&self, files: &BackingFiles, route: Option<ReadRoute>) -> Result<()> {
        let resolved = route.map(|r| resolve(files, r)).transpose()?;
        self.change(|routes| routes.read = resolved.map(Arc::new));
        Ok(())
    }

    /// Replaces the write route (`None` sends every write to the
    /// application), as [`RouteTable::set`] does the read route.
    pub fn set_write(&self, files: &BackingFiles, route: Option<WriteRoute>) -> Result<()> {
        let gate = self.gate.lock().unwrap().clone();
        let resolved = route.map(|r| resolve_write(files, r, gate)).transpose()?;
        self.change(|routes| routes.write = resolved.map(Arc::new));
        Ok(())
    }

    /// Gives the device its write gate, once; EBUSY for a second one.
    pub fn set_gate(&self, gate: Arc<WriteGate>) -> Result<()> {
        let mut current = self.gate.lock().unwrap();
        if current.is_some() {
            return Err(Error::new(
                libc::EBUSY,
                "the device already has a write gate",
            ));
        }
        *current = Some(gate);
        Ok(())
    }

    /// The device's write gate if its chunks are `chunk_bytes` long, or
    /// a new one from `make` if it has none yet; EBUSY for another size.
    pub fn shared_gate(
        &self,
        chunk_bytes: u64,
        make: impl FnOnce() -> Result<WriteGate>,
    ) -> Result<Arc<WriteGate>> {
        let mut current = self.gate.lock().unwrap();
        match &*current {
            Some(gate) if gate.chunk_bytes() == chunk_bytes => Ok(gate.clone()),
            Some(gate) => Err(Error::new(
                libc::EBUSY,
                format!(
                    "the device's write gate has chunks of {} bytes, not {chunk_bytes}",
                    gate.chunk_bytes()
                ),
            )),
            None => Ok(current.insert(Arc::new(make()?)).clone()),
        }
    }

    fn change(&self, apply: impl FnOnce(&mut Routes)) {
        let mut current = self.current.lock().unwrap();
        apply(&mut current);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The routes as of now, through `cache`.
    pub fn load<'a>(&self, cache: &'a mut RouteCache) -> &'a Routes {
        let generation = self.generation.load(Ordering::SeqCst);
        if generation != cache.generation {
            cache.routes = self.current.lock().unwrap().clone();
            cache.generation = generation;
        }
        &cache.routes
    }

    pub fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads served by a route so far, on all queues.
    pub fn served(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Writes served by a route so far, on all queues.
    pub fn served_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

fn resolve_write(
    files: &BackingFiles,
    route: WriteRoute,
    gate: Option<Arc<WriteGate>>,
) -> Result<ResolvedWrite> {
    check_file_count(route.files.len(), "write")?;
    check_file_offset(route.file_offset, "write")?;
    let gate = match (route.gated, gate) {
        (false, _) => None,
        (true, Some(gate)) => Some(gate),
        (true, None) => {
            return Err(Error::invalid(
                "a gated write route needs the device's write gate first",
            ))
        }
    };
    Ok(ResolvedWrite {
        files: resolve_files(files, &route.files, "write")?,
        file_offset: route.file_offset,
        gate,
        issue: if route.offload {
            Issue::Worker
        } else {
            Issue::Inline
        },
    })
}

fn check_file_count(count: usize, what: &str) -> Result<()> {
    if count == 0 || count > MAX_ROUTE_FILES {
        return Err(Error::invalid(format!(
            "a {what} route needs 1 to {MAX_ROUTE_FILES} files, got {count}"
        )));
    }
    Ok(())
}

fn resolve_files(
    files: &BackingFiles,
    handles: &[u32],
    what: &str,
) -> Result<Vec<(u32, Arc<BackingFile>)>> {
    handles
        .iter()
        .map(|&index| {
            files.get(index).map(|f| (index, f)).ok_or_else(|| {
                Error::new(
                    libc::EBADF,
                    format!("{what} route: no open backing file {index}"),
                )
            })
        })
        .collect()
}

fn check_file_offset(file_offset: u64, what: &str) -> Result<()> {
    if file_offset % 512 != 0 || file_offset > i64::MAX as u64 / 2 {
        return Err(Error::invalid(format!(
            "a {what} route's file offset must be a multiple of 512 below 2^62, got {file_offset}"
        )));
    }
    Ok(())
}

fn resolve(files: &BackingFiles, route: ReadRoute) -> Result<ResolvedRoute> {
    check_file_count(route.files.len(), "read")?;
    if !route.stripe_bytes.is_power_of_two() || route.stripe_bytes < 4096 {
        return Err(Error::invalid(format!(
            "a read route's stripe must be a power of two of at least 4096 bytes, got {}",
            route.stripe_bytes
        )));
    }
    check_file_offset(route.file_offset, "read")?;
    Ok(ResolvedRoute {
        files: resolve_files(files, &route.files, "read")?,
        file_offset: route.file_offset,
        stripe_shift: route.stripe_bytes.trailing_zeros(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tests::scratch_file;

    /// `n` files opened read-only in a new table; the temp files go when
    /// the returned guards do.
    fn table_with_files(n: usize) -> (BackingFiles, Vec<u32>, Vec<tempfile::NamedTempFile>) {
        let files = BackingFiles::default();
        let scratch: Vec<_> = (0..n).map(|_| scratch_file(8192)).collect();
        let handles = scratch
            .iter()
            .map(|f| {
                files
                    .open(f.path().to_str().unwrap(), false, true)
                    .unwrap()
                    .0
            })
            .collect();
        (files, handles, scratch)
    }

    #[test]
    fn reads_alternate_by_region_and_changes_reach_the_cache() {
        let (files, indexes, _scratch) = table_with_files(2);
        let table = RouteTable::default();
        let mut cache = RouteCache::default();
        assert!(table.load(&mut cache).read.is_none());
        let route = ReadRoute {
            files: indexes.clone(),
            file_offset: 1 << 20,
            stripe_bytes: 1 << 20,
        };
        table.set(&files, Some(route)).unwrap();
        let r = table.load(&mut cache).read.clone().unwrap();
        assert_eq!(r.pick(0).0, indexes[0]);
        assert_eq!(r.pick((1 << 20) - 4096).0, indexes[0]);
        assert_eq!(r.pick(1 << 20).0, indexes[1]);
        assert_eq!(r.pick(2 << 20).0, indexes[0]);
        assert_eq!(r.file_offset, 1 << 20);
        table.set(&files, None).unwrap();
        assert!(table.load(&mut cache).read.is_none());
    }

    #[test]
    fn a_write_route_is_checked_and_kept_beside_the_read_route() {
        let (files, indexes, _scratch) = table_with_files(1);
        let table = RouteTable::default();
        let mut cache = RouteCache::default();
        let read = ReadRoute {
            files: indexes.clone(),
            file_offset: 0,
            stripe_bytes: 4096,
        };
        table.set(&files, Some(read)).unwrap();
        let write = WriteRoute {
            files: indexes.clone(),
            file_offset: 4096,
            gated: false,
            offload: false,
        };
        table.set_write(&files, Some(write.clone())).unwrap();
        let routes = table.load(&mut cache);
        assert!(routes.read.is_some());
        let w = routes.write.clone().unwrap();
        assert_eq!((w.files[0].0, w.file_offset), (indexes[0], 4096));
        assert!(w.gate.is_none());
        assert_eq!(w.issue, Issue::Inline);
        for (bad, code) in [
            (
                WriteRoute {
                    files: vec![indexes[0] + 7],
                    ..write.clone()
                },
                "EBADF",
            ),
            (
                WriteRoute {
                    files: vec![],
                    ..write.clone()
                },
                "EINVAL",
            ),
            (
                WriteRoute {
                    gated: true,
                    ..write.clone()
                },
                "EINVAL",
            ),
            (
                WriteRoute {
                    file_offset: 1000,
                    ..write.clone()
                },
                "EINVAL",
            ),
        ] {
            assert_eq!(table.set_write(&files, Some(bad)).unwrap_err().code(), code);
        }
        assert!(
            table.load(&mut cache).write.is_some(),
            "the good route stays"
        );
        table.set_write(&files, None).unwrap();
        let routes = table.load(&mut cache);
        assert!(routes.write.is_none() && routes.read.is_some());
    }

    #[test]
    fn a_gated_write_route_mirrors_to_its_files_through_the_gate() {
        let (files, indexes, _scratch) = table_with_files(2);
        let table = RouteTable::default();
        let gate = Arc::new(WriteGate::new(1 << 20, 64 << 10).unwrap());
        table.set_gate(gate.clone()).unwrap();
        let again = Arc::new(WriteGate::new(1 << 20, 64 << 10).unwrap());
        assert_eq!(table.set_gate(again).unwrap_err().code(), "EBUSY");
        let route = WriteRoute {
            files: indexes.clone(),
            file_offset: 0,
            gated: true,
            offload: true,
        };
        table.set_write(&files, Some(route)).unwrap();
        let mut cache = RouteCache::default();
        let w = table.load(&mut cache).write.clone().unwrap();
        assert_eq!(w.files.len(), 2);
        assert!(Arc::ptr_eq(w.gate.as_ref().unwrap(), &gate));
        assert_eq!(w.issue, Issue::Worker);
    }

    #[test]
    fn the_queues_share_one_gate_of_one_chunk_size() {
        let table = RouteTable::default();
        let first = table
            .shared_gate(1 << 20, || WriteGate::new(8 << 20, 1 << 20))
            .unwrap();
        let again = table
            .shared_gate(1 << 20, || panic!("a second gate was made"))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = table.shared_gate(64 << 10, || WriteGate::new(8 << 20, 64 << 10));
        assert_eq!(other.err().map(|e| e.code()), Some("EBUSY"));
        let refused = RouteTable::default().shared_gate(0, || WriteGate::new(8 << 20, 0));
        assert_eq!(refused.err().map(|e| e.code()), Some("EINVAL"));
    }

    #[test]
    fn bad_routes_are_refused_and_leave_the_route_alone() {
        let (files, indexes, _scratch) = table_with_files(1);
        let table = RouteTable::default();
        let good = ReadRoute {
            files: indexes.clone(),
            file_offset: 0,
            stripe_bytes: 4096,
        };
        table.set(&files, Some(good.clone())).unwrap();
        let bad = [
            (
                ReadRoute {
                    files: vec![],
                    ..good.clone()
                },
                "EINVAL",
            ),
            (
                ReadRoute {
                    files: vec![indexes[0] + 1000],
                    ..good.clone()
                },
                "EBADF",
            ),
            (
                ReadRoute {
                    stripe_bytes: 6000,
                    ..good.clone()
                },
                "EINVAL",
            ),
            (
                ReadRoute {
                    stripe_bytes: 512,
                    ..good.clone()
                },
                "EINVAL",
            ),
            (
                ReadRoute {
                    file_offset: 100,
                    ..good.clone()
                },
                "EINVAL",
            ),
            (
                ReadRoute {
                    file_offset: !511,
                    ..good.clone()
                },
                "EINVAL",
            ),
        ];
        for (route, code) in bad {
            assert_eq!(table.set(&files, Some(route)).unwrap_err().code(), code);
        }
        let mut cache = RouteCache::default();
        assert!(
            table.load(&mut cache).read.is_some(),
            "the good route stays"
        );
    }
}
