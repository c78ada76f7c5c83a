//! Device info and kernel features as JavaScript objects.

use napi::bindgen_prelude::BigInt;
use napi_derive::napi;

#[napi(object)]
pub struct DeviceInfo {
    pub id: u32,
    /// "dead", "live", "quiesced" or "fail_io", as the kernel reports it.
    pub state: String,
    pub queues: u32,
    pub depth: u32,
    pub max_io_bytes: u32,
    /// Size in bytes.
    pub size: f64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub read_only: bool,
    /// Names of the `UBLK_F_*` flags the device has, e.g. "user_copy".
    pub flags: Vec<String>,
    /// The same flags as the kernel's bit mask.
    pub flags_mask: BigInt,
    /// IO data stays in the kernel (`UBLK_F_AUTO_BUF_REG`); false: it is
    /// copied to and from the server's buffers.
    pub zero_copy: bool,
    /// IOs are fetched and committed many per command (`UBLK_F_BATCH_IO`);
    /// false: one command per IO.
    pub batch_io: bool,
    /// What the device does when its server dies: "none" (it dies too) or
    /// "reissue" (it waits for a new server, `recoverDevice`).
    pub recovery: String,
    /// Process serving the device, or -1.
    pub server_pid: i32,
    /// A process holds the device open (its server, or its creator); false
    /// for a device whose server died.
    pub server_alive: bool,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// `/dev/ublkbN`
    pub block_path: String,
    /// `/dev/ublkcN`
    pub char_path: String,
}

impl From<ublk_core::DeviceInfo> for DeviceInfo {
    fn from(info: ublk_core::DeviceInfo) -> Self {
        DeviceInfo {
            id: info.id,
            state: info.state.name(),
            queues: info.queues as u32,
            depth: info.depth as u32,
            max_io_bytes: info.max_io_bytes,
            size: info.size as f64,
            logical_block_size: info.logical_block_size,
            physical_block_size: info.physical_block_size,
            read_only: info.read_only,
            flags: info.flag_names(),
            flags_mask: BigInt::from(info.flags),
            zero_copy: info.zero_copy(),
            batch_io: info.batch_io(),
            recovery: info.recovery().name().to_string(),
            server_pid: info.server_pid,
            server_alive: info.server_alive,
            owner_uid: info.owner_uid,
            owner_gid: info.owner_gid,
            block_path: info.block_path,
            char_path: info.char_path,
        }
    }
}

#[napi(object)]
pub struct KernelFeatures {
    /// Names of the supported `UBLK_F_*` features, e.g. "user_recovery".
    pub names: Vec<String>,
    pub mask: BigInt,
    /// Most queues a device may have on this machine.
    pub max_queues: u32,
    pub max_depth: u32,
}
