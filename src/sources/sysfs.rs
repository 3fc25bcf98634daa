//! The block devices the kernel has now: the names of `/sys/dev/block` (`<major>:<minor>`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::device::DevNum;
use crate::inventory::{DiskId, Observation, Seq};

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
        .map(|device| {
            let present = dir.join(device.to_string()).exists();
            let identity = if present { identity(sysfs, device) } else { None };
            Observation::Device { seq, device, present, identity }
        })
        .collect()
}

/// The disk behind a device number: `diskseq:<n>` from sysfs (Linux 5.15+), else udev's
/// `ID_WWN` or `ID_SERIAL` from its database, else unknown.
pub fn identity(sysfs: &Path, dev: DevNum) -> Option<DiskId> {
    let dir = sysfs.join(format!("dev/block/{dev}"));
    let read = |p: PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    // A partition has no diskseq of its own: its disk's, and its number on that disk.
    let number = |p: PathBuf| read(p).and_then(|s| s.parse::<u64>().ok());
    let seq = match read(dir.join("partition")) {
        Some(part) => {
            let part = part.parse::<u32>().ok();
            number(dir.join("../diskseq")).zip(part).map(|(diskseq, p)| DiskId::DiskSeq { diskseq, partition: Some(p) })
        }
        None => number(dir.join("diskseq")).map(|diskseq| DiskId::DiskSeq { diskseq, partition: None }),
    };
    if seq.is_some() {
        return seq;
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    if dir.exists() {
        SAID.call_once(|| {
            tracing::warn!("this kernel has no diskseq (Linux 5.15+): a reused device number is told apart only by udev's ID_WWN/ID_SERIAL, where udev has them");
        });
    }
    let udev = std::fs::read_to_string(format!("/run/udev/data/b{dev}")).ok()?;
    udev.lines().find_map(|l| {
        l.strip_prefix("E:ID_WWN=")
            .map(|v| DiskId::Wwn(v.into()))
            .or_else(|| l.strip_prefix("E:ID_SERIAL=").map(|v| DiskId::Serial(v.into())))
    })
}

pub fn identities(sysfs: &Path, devices: &BTreeSet<DevNum>) -> BTreeMap<DevNum, DiskId> {
    devices.iter().filter_map(|d| Some((*d, identity(sysfs, *d)?))).collect()
}
