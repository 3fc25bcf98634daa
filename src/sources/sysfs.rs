//! The block devices the kernel has now: the names of `/sys/dev/block` (`<major>:<minor>`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

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
    // Opened once for all the devices, as `identities` does.
    let dev_block = open_dev_block(sysfs).ok();
    let devices: BTreeSet<DevNum> = devices.into_iter().filter(|d| !d.is_anonymous()).collect();
    devices
        .into_iter()
        .map(|device| {
            let present = dir.join(device.to_string()).exists();
            let identity = if present { identity_in(sysfs, dev_block.as_ref(), device) } else { None };
            Observation::Device { seq, device, present, identity }
        })
        .collect()
}

/// The disk behind a device number: `diskseq:<n>` from sysfs (Linux 5.15+), else udev's
/// `ID_WWN` or `ID_SERIAL` from its database, else unknown.
pub fn identity(sysfs: &Path, dev: DevNum) -> Option<DiskId> {
    identity_in(sysfs, open_dev_block(sysfs).ok().as_ref(), dev)
}

/// The identities of `devices` (those the kernel has no identity for are left out), read
/// with `/sys/dev/block` opened once: three system calls a device. A node of thousands
/// of volumes reads them all at start.
pub fn identities(sysfs: &Path, devices: impl IntoIterator<Item = DevNum>) -> BTreeMap<DevNum, DiskId> {
    let dir = open_dev_block(sysfs).ok();
    devices.into_iter().filter_map(|d| Some((d, identity_in(sysfs, dir.as_ref(), d)?))).collect()
}

fn open_dev_block(sysfs: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(&sysfs.join("dev/block"), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

/// `dir`: `/sys/dev/block`, where `<major>:<minor>` links to the device's directory (the
/// kernel's own tree: following its links is safe).
fn identity_in(sysfs: &Path, dir: Option<&OwnedFd>, dev: DevNum) -> Option<DiskId> {
    let number = |attribute: &str| -> Option<u64> {
        let path = format!("{dev}/{attribute}");
        let fd = nix::fcntl::openat(dir?, path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(&fd, &mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    };
    // A whole disk has a diskseq; a partition has none of its own: its disk's, and its
    // number on that disk.
    let seq = match number("diskseq") {
        Some(diskseq) => Some(DiskId::DiskSeq { diskseq, partition: None }),
        None => number("partition")
            .and_then(|p| u32::try_from(p).ok())
            .and_then(|p| number("../diskseq").map(|diskseq| DiskId::DiskSeq { diskseq, partition: Some(p) })),
    };
    if seq.is_some() {
        return seq;
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    if sysfs.join(format!("dev/block/{dev}")).exists() {
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
