//! Reads the queue threads serve without the application.
//!
//! The application names backing files and how device offsets map onto
//! them; from then on a read is sent straight to one of those files from
//! the queue thread, and the IO completes when the read does, with no trip
//! through the application. A read that fails there is handed to the
//! application like any other IO, with the failure attached, so it can be
//! served from elsewhere. Mirrors and loop-like targets get reads at the
//! speed of a Rust target this way, and keep their policy in the
//! application: it changes or removes the route whenever its state changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::files::{BackingFile, BackingFiles};

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

/// The route every queue of a device reads, and how many reads it served.
#[derive(Default)]
pub(crate) struct RouteTable {
    /// Bumped by every change, so queue threads re-read the route only
    /// when it changed.
    generation: AtomicU64,
    current: Mutex<Option<Arc<ResolvedRoute>>>,
    served: AtomicU64,
}

/// A queue thread's copy of the route.
#[derive(Default)]
pub(crate) struct RouteCache {
    generation: u64,
    route: Option<Arc<ResolvedRoute>>,
}

impl RouteTable {
    /// Replaces the route (`None` sends every read to the application).
    /// Reads that reach a queue after this returns use the new route.
    pub fn set(&self, files: &BackingFiles, route: Option<ReadRoute>) -> Result<()> {
        let resolved = route.map(|r| resolve(files, r)).transpose()?;
        let mut current = self.current.lock().unwrap();
        *current = resolved.map(Arc::new);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The route as of now, through `cache`.
    pub fn load<'a>(&self, cache: &'a mut RouteCache) -> Option<&'a Arc<ResolvedRoute>> {
        let generation = self.generation.load(Ordering::SeqCst);
        if generation != cache.generation {
            cache.route = self.current.lock().unwrap().clone();
            cache.generation = generation;
        }
        cache.route.as_ref()
    }

    pub fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads served by a route so far, on all queues.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

fn resolve(files: &BackingFiles, route: ReadRoute) -> Result<ResolvedRoute> {
    if route.files.is_empty() || route.files.len() > MAX_ROUTE_FILES {
        return Err(Error::invalid(format!(
            "a read route needs 1 to {MAX_ROUTE_FILES} files, got {}",
            route.files.len()
        )));
    }
    if !route.stripe_bytes.is_power_of_two() || route.stripe_bytes < 4096 {
        return Err(Error::invalid(format!(
            "a read route's stripe must be a power of two of at least 4096 bytes, got {}",
            route.stripe_bytes
        )));
    }
    if route.file_offset % 512 != 0 || route.file_offset > i64::MAX as u64 / 2 {
        return Err(Error::invalid(format!(
            "a read route's file offset must be a multiple of 512 below 2^62, got {}",
            route.file_offset
        )));
    }
    let resolved = route
        .files
        .iter()
        .map(|&index| {
            files.get(index).map(|f| (index, f)).ok_or_else(|| {
                Error::new(
                    libc::EBADF,
                    format!("read route: no open backing file {index}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ResolvedRoute {
        files: resolved,
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
        assert!(table.load(&mut cache).is_none());
        let route = ReadRoute {
            files: indexes.clone(),
            file_offset: 1 << 20,
            stripe_bytes: 1 << 20,
        };
        table.set(&files, Some(route)).unwrap();
        let r = table.load(&mut cache).unwrap().clone();
        assert_eq!(r.pick(0).0, indexes[0]);
        assert_eq!(r.pick((1 << 20) - 4096).0, indexes[0]);
        assert_eq!(r.pick(1 << 20).0, indexes[1]);
        assert_eq!(r.pick(2 << 20).0, indexes[0]);
        assert_eq!(r.file_offset, 1 << 20);
        table.set(&files, None).unwrap();
        assert!(table.load(&mut cache).is_none());
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
        assert!(table.load(&mut cache).is_some(), "the good route stays");
    }
}
