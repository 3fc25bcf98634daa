//! Block-device uevents, as the `udev` crate hands them over: a set of `KEY=VALUE`
//! properties. Pure: it turns properties into a [`BlockUevent`] or says why not.
//!
//! The properties come from the kernel (or udevd) over netlink; they are untrusted bytes
//! as far as this parser is concerned, and it is fuzzed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::device::DevNum;
use crate::model::DiskId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UeventAction {
    Add,
    Remove,
    Change,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUevent {
    pub action: UeventAction,
    pub device: DevNum,
    /// `DEVNAME` (`loop5`, `nbd0`, `nvme0n1`), when the event has it.
    pub devname: Option<String>,
    /// `DISKSEQ`: a new value each time the kernel creates a disk (Linux 5.15+). A
    /// partition's event carries its disk's.
    pub diskseq: Option<u64>,
    /// `DEVTYPE=partition`: the device is a partition, with its number (`PARTN`) when the
    /// event has it (`Some(None)`: a partition whose number the event does not say).
    pub partition: Option<Option<u32>>,
}

impl BlockUevent {
    /// The identity of the disk (or partition) behind the number, as the event tells it;
    /// the same string a read of sysfs gives (`sysfs::identity`), so that a `change` event
    /// never looks like another disk. `None`: the event does not say enough.
    pub fn identity(&self) -> Option<DiskId> {
        match (self.diskseq, self.partition) {
            (Some(diskseq), None) => Some(DiskId::DiskSeq { diskseq, partition: None }),
            (Some(diskseq), Some(Some(p))) => Some(DiskId::DiskSeq { diskseq, partition: Some(p) }),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UeventSkip {
    #[error("not a block device event")]
    NotBlock,
    #[error("action {0:?} does not change presence")]
    IgnoredAction(String),
    #[error("no usable MAJOR/MINOR")]
    NoDevNum,
}

/// Interprets one event's properties. Keys and values are raw bytes.
pub fn from_properties<'a, I>(props: I) -> Result<BlockUevent, UeventSkip>
where
    I: IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
{
    let (mut action, mut subsystem, mut major, mut minor, mut devname, mut diskseq) =
        (None, None, None, None, None, None);
    let (mut devtype, mut partn) = (None, None);
    for (key, value) in props {
        let value = value.as_bytes();
        match key.as_bytes() {
            b"ACTION" => action = Some(value),
            b"SUBSYSTEM" => subsystem = Some(value),
            b"MAJOR" => major = number::<u32>(value),
            b"MINOR" => minor = number::<u32>(value),
            b"DEVNAME" => devname = std::str::from_utf8(value).ok(),
            b"DISKSEQ" => diskseq = number::<u64>(value),
            b"DEVTYPE" => devtype = Some(value),
            b"PARTN" => partn = number::<u32>(value),
            _ => {}
        }
    }
    if subsystem != Some(b"block") {
        return Err(UeventSkip::NotBlock);
    }
    let action = match action.unwrap_or_default() {
        b"add" => UeventAction::Add,
        b"remove" => UeventAction::Remove,
        b"change" => UeventAction::Change,
        other => return Err(UeventSkip::IgnoredAction(String::from_utf8_lossy(other).into())),
    };
    let (Some(major), Some(minor)) = (major, minor) else {
        return Err(UeventSkip::NoDevNum);
    };
    Ok(BlockUevent {
        action,
        device: DevNum::new(major, minor),
        // udev gives DEVNAME as /dev/loop5, the kernel as loop5: keep the kernel's form.
        devname: devname.map(|n| n.trim_start_matches("/dev/").to_string()),
        diskseq,
        partition: (devtype == Some(b"partition")).then_some(partn),
    })
}

fn number<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Splits a kernel uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`) into properties.
/// The agent receives events through libudev; this is how tests and the fuzz target feed
/// the same interpreter with raw kernel bytes.
pub fn split_payload(payload: &[u8]) -> Vec<(&OsStr, &OsStr)> {
    payload
        .split(|&b| b == 0)
        .skip(1) // the "ACTION@DEVPATH" header repeats what the properties say
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            Some((OsStr::from_bytes(&kv[..eq]), OsStr::from_bytes(&kv[eq + 1..])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOOP_ADD: &[u8] = b"add@/devices/virtual/block/loop77\0ACTION=add\0DEVPATH=/devices/virtual/block/loop77\0SUBSYSTEM=block\0MAJOR=7\0MINOR=77\0DEVNAME=loop77\0DEVTYPE=disk\0DISKSEQ=310\0SEQNUM=5000\0";

    #[test]
    fn kernel_add_event() {
        let ev = from_properties(split_payload(LOOP_ADD)).unwrap();
        assert_eq!(
            ev,
            BlockUevent {
                action: UeventAction::Add,
                device: DevNum::new(7, 77),
                devname: Some("loop77".into()),
                diskseq: Some(310),
                partition: None,
            }
        );
        assert_eq!(ev.identity().map(|i| i.to_string()).as_deref(), Some("diskseq:310"));
    }

    /// What the kernel sends for a partition (seen with `partx -a` on a loop device): its
    /// disk's DISKSEQ and its number. Its identity must be the one sysfs gives.
    #[test]
    fn a_partition_is_its_disk_and_its_number() {
        let part = b"change@/devices/virtual/block/loop0/loop0p1\0ACTION=change\0SUBSYSTEM=block\0MAJOR=259\0MINOR=0\0DEVNAME=loop0p1\0DEVTYPE=partition\0DISKSEQ=17\0PARTN=1\0";
        let ev = from_properties(split_payload(part)).unwrap();
        assert_eq!(ev.partition, Some(Some(1)));
        assert_eq!(ev.identity().map(|i| i.to_string()).as_deref(), Some("diskseq:17p1"));
        let no_number =
            b"change@/x\0ACTION=change\0SUBSYSTEM=block\0MAJOR=259\0MINOR=0\0DEVTYPE=partition\0DISKSEQ=17\0";
        assert_eq!(from_properties(split_payload(no_number)).unwrap().identity(), None, "read from sysfs instead");
    }

    #[test]
    fn skips_what_is_not_a_block_presence_change() {
        let net = b"add@/x\0ACTION=add\0SUBSYSTEM=net\0MAJOR=1\0MINOR=2\0";
        assert_eq!(from_properties(split_payload(net)), Err(UeventSkip::NotBlock));
        let bind = b"bind@/x\0ACTION=bind\0SUBSYSTEM=block\0MAJOR=1\0MINOR=2\0";
        assert!(matches!(from_properties(split_payload(bind)), Err(UeventSkip::IgnoredAction(_))));
        let nonum = b"add@/x\0ACTION=add\0SUBSYSTEM=block\0MAJOR=x\0MINOR=2\0";
        assert_eq!(from_properties(split_payload(nonum)), Err(UeventSkip::NoDevNum));
    }

    proptest! {
        // Fuzz-style: arbitrary datagrams never panic, and whatever parses is a block event.
        #[test]
        fn arbitrary_payloads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(ev) = from_properties(split_payload(&data)) {
                let props = split_payload(&data);
                prop_assert!(props.iter().any(|(k, v)| k.as_bytes() == b"SUBSYSTEM" && v.as_bytes() == b"block"));
                let _ = ev.device;
            }
        }

        #[test]
        fn any_device_number_survives(major in any::<u32>(), minor in any::<u32>()) {
            let payload = format!("add@/d\0ACTION=add\0SUBSYSTEM=block\0MAJOR={major}\0MINOR={minor}\0");
            let ev = from_properties(split_payload(payload.as_bytes())).unwrap();
            prop_assert_eq!(ev.device, DevNum::new(major, minor));
        }
    }
}
