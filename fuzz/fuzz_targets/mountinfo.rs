//! Fuzzes `/proc/<pid>/mountinfo` parsing with arbitrary bytes.
#![no_main]

use hotplug_watchdog::mountinfo::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);

    // Every non-empty line is either a mount or counted as malformed.
    let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(parsed.mounts.len() + parsed.malformed_lines, lines, "mounts + malformed != non-empty lines");

    // Every mount point is absolute.
    for m in &parsed.mounts {
        assert!(
            m.mount_point.as_os_str().as_encoded_bytes().starts_with(b"/"),
            "relative mount point {:?}",
            m.mount_point
        );
    }

    // Deterministic.
    assert_eq!(parse(data), parsed);
});
