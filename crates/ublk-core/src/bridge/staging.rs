//! Staging buffers: memory the application owns for backend IO that is not
//! an IO's data, such as metadata (a RAID1 bitmap, a superblock) or a chunk
//! being copied during resync. Like backing files they are named by index,
//! so a request can only reach memory this table handed out, and every
//! range is checked against the buffer's length.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

/// O_DIRECT needs sector alignment; page alignment also suits 4k devices.
const ALIGN: usize = 4096;
/// One buffer at most this large: a resync chunk or a large bitmap.
pub const MAX_STAGING_BYTES: usize = 256 << 20;

/// A zeroed, page-aligned allocation that never moves.
#[derive(Debug)]
pub struct StagingBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory; concurrent access is the kernel
// writing while an operation is in flight, which the application accepts
// as it does for any buffer it hands to IO.
unsafe impl Send for StagingBuffer {}
unsafe impl Sync for StagingBuffer {}

impl StagingBuffer {
    fn new(len: usize) -> Result<StagingBuffer> {
        if len == 0 || len > MAX_STAGING_BYTES {
            return Err(Error::invalid(format!(
                "a staging buffer holds 1..{MAX_STAGING_BYTES} bytes, not {len}"
            )));
        }
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::new(
                libc::ENOMEM,
                format!("cannot allocate {len} bytes"),
            ));
        }
        Ok(StagingBuffer { ptr, len })
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.next_multiple_of(ALIGN), ALIGN).expect("bounded size")
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to `[offset, offset + length)`, if that lies inside.
    pub fn range(&self, offset: u32, length: u32) -> Option<*mut u8> {
        let end = (offset as usize).checked_add(length as usize)?;
        // SAFETY: offset <= end <= len, inside the allocation.
        (length > 0 && end <= self.len).then(|| unsafe { self.ptr.add(offset as usize) })
    }
}

impl Drop for StagingBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// The staging buffers of one bridged device, by index.
#[derive(Default)]
pub struct StagingBuffers {
    buffers: RwLock<Vec<Option<Arc<StagingBuffer>>>>,
}

impl StagingBuffers {
    /// Allocates a zeroed buffer of `len` bytes; returns its index.
    pub fn alloc(&self, len: usize) -> Result<(u32, Arc<StagingBuffer>)> {
        let buffer = Arc::new(StagingBuffer::new(len)?);
        let mut buffers = self.buffers.write().unwrap();
        buffers.push(Some(buffer.clone()));
        Ok(((buffers.len() - 1) as u32, buffer))
    }

    pub fn get(&self, index: u32) -> Option<Arc<StagingBuffer>> {
        self.buffers.read().unwrap().get(index as usize)?.clone()
    }

    /// Drops the table's reference; operations in flight and views the
    /// application still holds keep the memory until they are done.
    /// Indexes are never reused.
    pub fn free(&self, index: u32) -> bool {
        self.buffers
            .write()
            .unwrap()
            .get_mut(index as usize)
            .and_then(Option::take)
            .is_some()
    }

    pub fn free_all(&self) {
        for b in self.buffers.write().unwrap().iter_mut() {
            b.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_bounded() {
        let table = StagingBuffers::default();
        let (idx, buf) = table.alloc(5000).unwrap();
        assert_eq!(idx, 0);
        assert_eq!(buf.as_mut_ptr() as usize % ALIGN, 0);
        // SAFETY: 5000 bytes were allocated.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_mut_ptr(), buf.len()) };
        assert!(bytes.iter().all(|b| *b == 0));
        assert!(buf.range(0, 5000).is_some());
        assert!(buf.range(4999, 1).is_some());
        assert!(buf.range(4999, 2).is_none(), "past the end");
        assert!(buf.range(0, 0).is_none(), "empty");
        assert!(buf.range(u32::MAX, u32::MAX).is_none(), "overflow");
        assert_eq!(table.alloc(0).unwrap_err().code(), "EINVAL");
        assert_eq!(
            table.alloc(MAX_STAGING_BYTES + 1).unwrap_err().code(),
            "EINVAL"
        );
        assert!(table.free(0));
        assert!(!table.free(0), "freed once");
        assert!(table.get(0).is_none());
        let (idx, _) = table.alloc(1).unwrap();
        assert_eq!(idx, 1, "indexes are not reused");
    }
}
