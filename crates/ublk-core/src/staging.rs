//! Staging buffers: memory owned by the native side for backend IO that is
//! not an IO's data, such as metadata (a RAID1 bitmap, a superblock) or a
//! chunk being copied during resync. Like backing files they are named by
//! handle, so a request can only reach memory its device handed out, and
//! every range is checked against the buffer's length.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::HandleTable;

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

// SAFETY: the buffer is plain memory that never moves and is freed only
// when the last reference goes; concurrent access is the kernel writing
// while an operation is in flight, which the application accepts as it
// does for any buffer it hands to IO.
unsafe impl Send for StagingBuffer {}
// SAFETY: as for Send: shared references only hand out the pointer.
unsafe impl Sync for StagingBuffer {}

impl StagingBuffer {
    pub fn new(len: usize) -> Result<StagingBuffer> {
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

/// The staging buffers of one device, by handle.
pub type StagingBuffers = HandleTable<StagingBuffer>;

impl StagingBuffers {
    /// Allocates a zeroed buffer of `len` bytes; returns its handle.
    pub fn alloc(&self, len: usize) -> Result<(u32, Arc<StagingBuffer>)> {
        self.insert(StagingBuffer::new(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_bounded() {
        let table = StagingBuffers::default();
        let (handle, buf) = table.alloc(5000).unwrap();
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
        assert!(table.remove(handle));
        assert!(!table.remove(handle), "freed once");
        assert!(table.get(handle).is_none());
        let (next, _) = table.alloc(1).unwrap();
        assert_ne!(next, handle, "handles are not reused");
    }
}
