//! The block devices the kernel has now: the names of `/sys/dev/block` (`<major>:<minor>`).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use crate::device::DevNum;

pub fn list_block_devices(sysfs: &Path) -> io::Result<BTreeSet<DevNum>> {
    let dir = sysfs.join("dev/block");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        // Anything else in there is not the kernel's; ignore it rather than fail the scan.
        if let Some(dev) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.insert(dev);
        }
    }
    Ok(out)
}
