//! Names for the `UBLK_F_*` bits, for people and for the JS side: a kernel
//! reports a bit mask, users ask "does this kernel have user recovery?".

/// (bit, name) in the order the kernel added them; names drop the
/// `UBLK_F_` prefix and are lower case, as users write them in options.
pub const FEATURE_NAMES: &[(u64, &str)] = &[
    (1 << 0, "support_zero_copy"),
    (1 << 1, "uring_cmd_comp_in_task"),
    (1 << 2, "need_get_data"),
    (1 << 3, "user_recovery"),
    (1 << 4, "user_recovery_reissue"),
    (1 << 5, "unprivileged_dev"),
    (1 << 6, "cmd_ioctl_encode"),
    (1 << 7, "user_copy"),
    (1 << 8, "zoned"),
    (1 << 9, "user_recovery_fail_io"),
    (1 << 10, "update_size"),
    (1 << 11, "auto_buf_reg"),
    (1 << 12, "quiesce"),
    (1 << 13, "per_io_daemon"),
    (1 << 14, "buf_reg_off_daemon"),
    (1 << 15, "batch_io"),
    (1 << 16, "integrity"),
    (1 << 17, "safe_stop_dev"),
    (1 << 18, "no_auto_part_scan"),
    (1 << 19, "shmem_zc"),
];

/// The names of the bits set in `mask`; unknown bits come out as `bit<N>`
/// so a newer kernel's features are visible, not dropped.
pub fn feature_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            FEATURE_NAMES
                .iter()
                .find(|(b, _)| *b == 1u64 << bit)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| format!("bit{bit}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kernel_header_bits() {
        assert_eq!(
            FEATURE_NAMES[3].0,
            libublk::sys::UBLK_F_USER_RECOVERY as u64
        );
        assert_eq!(FEATURE_NAMES[7].0, libublk::sys::UBLK_F_USER_COPY as u64);
        assert_eq!(
            FEATURE_NAMES[11].0,
            libublk::sys::UBLK_F_AUTO_BUF_REG as u64
        );
        assert_eq!(FEATURE_NAMES[15].0, libublk::sys::UBLK_F_BATCH_IO as u64);
    }

    #[test]
    fn unknown_bits_are_kept() {
        assert_eq!(
            feature_names((1 << 3) | (1 << 40)),
            vec!["user_recovery".to_string(), "bit40".to_string()]
        );
    }
}
