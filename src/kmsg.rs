//! The kernel log as `/dev/kmsg` hands it out, one record per read:
//! `<prio>,<seq>,<usec>,<flags>[,...];<message>\n` followed by ` KEY=value` lines.
//! Pure: records in, block-layer errors out. The block layer names a failing device in
//! two forms, both matched here:
//! - `I/O error, dev loop5, sector 2048 op 0x0:(READ) ...` (blk_print_req_error; the first
//!   words vary with the error: `critical space allocation error`, `critical target error`, ...);
//! - `Buffer I/O error on dev loop5, logical block 0, ...` (the buffer cache).
//!
//! Everything else is dropped after one substring search, so a chatty kernel costs little.

/// One record's sequence number and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub message: &'a str,
}

/// Parses one record as read from `/dev/kmsg`; `None` for anything malformed.
pub fn parse_record(raw: &[u8]) -> Option<Record<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let (prefix, rest) = text.split_once(';')?;
    let mut fields = prefix.split(',');
    let _prio: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let _usec: u64 = fields.next()?.parse().ok()?;
    // The message ends at the first newline; continuation lines carry dictionary keys.
    let message = rest.split('\n').next().unwrap_or_default();
    Some(Record { seq, message })
}

/// The kernel name of the block device a block-layer error line is about.
pub fn io_error_device(message: &str) -> Option<&str> {
    let after = if let Some(i) = message.find("Buffer I/O error on dev ") {
        &message[i + "Buffer I/O error on dev ".len()..]
    } else {
        let i = message.find(" error, dev ")?;
        let after = &message[i + " error, dev ".len()..];
        // Both blk_print_req_error forms go on with the sector.
        if !after.contains(", sector ") {
            return None;
        }
        after
    };
    let name = after.split([',', ' ']).next()?;
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_records_and_finds_block_errors() {
        let r = parse_record(b"3,1234,4003071117,-;critical space allocation error, dev loop0, sector 2048 op 0x1:(WRITE) flags 0xc800 phys_seg 128 prio class 2\n SUBSYSTEM=block\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(io_error_device(r.message), Some("loop0"));
        for (line, dev) in [
            ("I/O error, dev nbd0, sector 0 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0", Some("nbd0")),
            ("blk_update_request: I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x800", Some("sda")),
            ("Buffer I/O error on dev nvme0n1p2, logical block 0, async page read", Some("nvme0n1p2")),
            ("EXT4-fs error (device loop3): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0", None),
            ("usb 1-1: new high-speed USB device number 2 using xhci_hcd", None),
            ("some error, dev x", None),
            ("I/O error, dev ../../etc, sector 1", None),
        ] {
            assert_eq!(io_error_device(line), dev, "{line}");
        }
        assert_eq!(parse_record(b"not a record"), None);
        assert_eq!(parse_record(b"6,x,1,-;msg"), None);
    }

    proptest! {
        // Fuzz-style: any bytes parse or not, never panic; whatever a device name comes out,
        // it is a plain kernel name (no path can be smuggled into a sysfs lookup).
        #[test]
        fn arbitrary_records_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(r) = parse_record(&data) {
                if let Some(name) = io_error_device(r.message) {
                    prop_assert!(!name.contains('/') && !name.contains(".."));
                }
            }
        }
    }
}
