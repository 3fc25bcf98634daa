//! The docs name the metrics the binary serves, no more, no fewer.

mod support;

use std::collections::BTreeSet;

use support::*;

#[test]
fn metrics_reference_matches_the_binary() {
    if !require_root("metrics_reference_matches_the_binary") {
        return;
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `hotplug_watchdog_"))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .collect();

    // A volume that vanished, so that the per-volume counters have a series too.
    let tree = KubeletTree::new();
    let mut disk = LoopDevice::add();
    tree.launcher("l");
    tree.launcher_block("l", "v", disk.dev());
    // And one with real I/O errors, for the error counter.
    let failing = FailingDisk::new();
    tree.launcher_block("l", "w", failing.disk.dev());
    let agent = Agent::start(&tree.root, &[]);
    agent.wait_ready();
    failing.fail_writes_until("I/O errors counted", || {
        agent.metrics().contains("hotplug_watchdog_volume_io_errors_total{")
    });
    disk.remove();
    agent.wait_volume("l", "v", Some("vanished"));
    // And a new disk under the same number, for the replaced counter.
    let _reused = LoopDevice::re_add(disk.index);
    agent.wait_volume("l", "v", Some("replaced"));
    // Prometheus text names counters with their _total suffix, as the docs do.
    let served: BTreeSet<String> = agent
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(documented, served);
}
