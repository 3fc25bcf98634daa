//! Fuzzes kernel uevent datagrams (`ACTION@DEVPATH\0KEY=VALUE\0...`) through
//! `split_payload` and `from_properties`.
#![no_main]

use std::os::unix::ffi::OsStrExt;

use hotplug_watchdog::uevent::{from_properties, split_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let props = split_payload(data);
    let first = from_properties(props.iter().copied());

    // Deterministic: the same input twice gives the same result.
    let again = from_properties(split_payload(data));
    assert_eq!(first, again, "same payload, different results");

    if first.is_ok() {
        // A parsed event implies a SUBSYSTEM=block property was present.
        assert!(
            props.iter().any(|(k, v)| k.as_bytes() == b"SUBSYSTEM" && v.as_bytes() == b"block"),
            "event parsed without SUBSYSTEM=block: {first:?}"
        );
    }
});
