//! Whether a writable volume is full. `/work` and `/tmp` are memory-backed volumes the kernel
//! caps at `disk_mb`: writes past it fail with ENOSPC, and a program that then fails is
//! reported as having hit the disk limit.
use std::path::Path;

use nix::sys::statvfs::statvfs;

/// Free space under which a volume counts as full: an eighth of it, between 1 and 8 MiB (a
/// write or an allocation that failed for lack of room leaves at most about that much).
pub fn full_threshold(size: u64) -> u64 {
    (size / 8).clamp(1 << 20, 8 << 20)
}

pub fn nearly_full(path: &Path) -> bool {
    let Ok(st) = statvfs(path) else {
        return false;
    };
    let block = st.fragment_size();
    let size = st.blocks() * block;
    let free = st.blocks_available() * block;
    size > 0 && free < full_threshold(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_an_eighth_between_one_and_eight_mib() {
        assert_eq!(full_threshold(4 << 20), 1 << 20);
        assert_eq!(full_threshold(16 << 20), 2 << 20);
        assert_eq!(full_threshold(1 << 30), 8 << 20);
    }
}
