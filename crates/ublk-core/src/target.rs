//! What a target is to the device runtime: a kind name, a chance to shape
//! the device's parameters, and a loop that serves one queue on its thread.

use libublk::io::{BufDescList, UblkDev, UblkQueue};
use libublk::sys;

use crate::error::{Error, Result};

/// Block-layer parameters a target may adjust before the device starts.
/// Size, block sizes and max IO size are already filled in from
/// [`crate::DeviceOptions`].
pub type DeviceParams = sys::ublk_params;

/// A block device implementation served by one thread per queue.
pub trait Target: Send + Sync + 'static {
    /// Short kind name ("null", "loop", ...), recorded in the device's info.
    fn kind(&self) -> &str;

    /// `UBLK_F_*` flags this target needs from the driver.
    fn ctrl_flags(&self) -> u64 {
        0
    }

    /// Adjusts parameters (read-only, discard, cache attributes) before start.
    fn configure(&self, _params: &mut DeviceParams) -> Result<()> {
        Ok(())
    }

    /// Entries of each queue's io_uring for a queue of `depth` IOs; targets
    /// that submit their own backend IO on the ring need more.
    fn ring_depth(&self, depth: u16) -> u16 {
        depth
    }

    /// Serves queue `qid` on the calling thread until the device stops.
    /// Called once per queue, each on its own thread; [`open_queue`] does
    /// the set-up every target needs.
    fn serve_queue(&self, qid: u16, dev: &UblkDev) -> Result<()>;
}

/// Creates queue `qid`'s ring and hands the driver one FETCH per tag, with
/// `bufs` as the tags' data buffers (one per tag, `max_io_bytes` each).
///
/// Device start waits until every queue has fetched; a queue that fails
/// here must still report in, or start would wait forever.
// `&Vec` because libublk's `BufDescList::Slices` takes one.
#[allow(clippy::ptr_arg)]
pub fn open_queue<'a>(
    qid: u16,
    dev: &'a UblkDev,
    bufs: &Vec<libublk::helpers::IoBuf<u8>>,
) -> Result<UblkQueue<'a>> {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            // libublk only exposes the "mlock failed" report to outsiders;
            // it makes start fail at once instead of hanging, and the real
            // cause travels back through the queue's error.
            dev.notify_buffer_registration_complete(true);
            return Err(Error::from_ublk(format!("create queue {qid}"), e));
        }
    };
    queue
        .submit_fetch_commands_unified(BufDescList::Slices(Some(bufs)))
        .map_err(|e| Error::from_ublk(format!("fetch commands on queue {qid}"), e))
}
