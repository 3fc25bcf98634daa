//! The block devices the kernel has now: the names of `/sys/dev/block` (`<major>:<minor>`).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use crate::device::DevNum;
use crate::inventory::{Observation, Seq};

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

/// The presence of each device, as read now, for a read that took `seq` before it began.
/// A source that reads a node pointing at a device reads the device too, so the verdict
/// never waits for a uevent that may come later (udevd re-broadcasts after its rules).
pub fn observe_devices(sysfs: &Path, seq: Seq, devices: impl IntoIterator<Item = DevNum>) -> Vec<Observation> {
    let dir = sysfs.join("dev/block");
    let devices: BTreeSet<DevNum> = devices.into_iter().filter(|d| !d.is_anonymous()).collect();
    devices
        .into_iter()
        .map(|device| Observation::Device { seq, device, present: dir.join(device.to_string()).exists() })
        .collect()
}
