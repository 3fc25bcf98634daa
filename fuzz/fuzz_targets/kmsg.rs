//! Fuzzes `/dev/kmsg` records through `parse_record` and `io_error_device`: never a panic,
//! and a device name that comes out is a plain kernel name, safe to look up in sysfs.
#![no_main]

use hotplug_watchdog::kmsg::{io_error_device, parse_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(record) = parse_record(data) else { return };
    assert_eq!(parse_record(data), Some(record.clone()), "deterministic");
    assert!(data.len() > record.message.len(), "the message is part of the record");
    if let Some(name) = io_error_device(record.message) {
        assert!(!name.is_empty() && name.len() <= 32);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{name:?}");
    }
});
