//! Kernel I/O errors on hotplug devices, produced for real: a loop device over a sparse
//! file on a tmpfs smaller than the file fails writes past the tmpfs's size with ENOSPC,
//! and the block layer logs `critical space allocation error, dev loopN, sector ...`.
//! Counted against the volume whose device it is; errors on other devices are not.

mod support;

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

const L: &str = "launcher-io";
const A: &str = "attach-io";

/// The overrun test changes a machine-wide sysctl and floods the kernel log.
static SERIAL: Mutex<()> = Mutex::new(());

fn io_errors(agent: &Agent, volume: &str) -> f64 {
    volume_entry(&agent.report(), L, volume).map_or(0.0, |v| v["io_errors"].as_f64().unwrap())
}

fn kmsg_write(line: &str) {
    let mut k = std::fs::OpenOptions::new().write(true).open("/dev/kmsg").unwrap();
    k.write_all(line.as_bytes()).unwrap();
}

#[test]
fn real_io_errors_count_against_the_right_volume_only() {
    if !require_root("real_io_errors_count_against_the_right_volume_only") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tree = KubeletTree::new();
    let ours = FailingDisk::new();
    let other = FailingDisk::new(); // a device no volume uses
    tree.hotplugged(L, A, "disk1", ours.disk.dev());
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));

    // Errors on a device no volume uses: the agent sees the lines and counts nothing.
    let lines_seen = || metric(&agent.metrics(), "hotplug_watchdog_source_events_total{source=\"kmsg\"}");
    other.fail_writes_until("the agent to see the other device's errors", || lines_seen() >= 1.0);
    // A line that merely looks like one, for a device that does not exist.
    kmsg_write("hotplug-watchdog test: I/O error, dev loop1048575, sector 0 op 0x0:(READ)");
    assert_eq!(io_errors(&agent, "disk1"), 0.0);
    assert!(!agent.metrics().contains("hotplug_watchdog_volume_io_errors_total{"));
    ours.fail_writes_until("errors on disk1 counted", || io_errors(&agent, "disk1") >= 1.0);
    let m = agent.metrics();
    let labels = format!("pod_uid=\"{L}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"");
    let counted = metric(&m, &format!("hotplug_watchdog_volume_io_errors_total{{{labels}}}"));
    assert!(counted >= 1.0, "{m}");
    assert_eq!(m.matches("hotplug_watchdog_volume_io_errors_total{").count(), 1, "only disk1 has a series: {m}");
    // Report and metric agree; errors may still be arriving (the kernel logs the failed
    // write's lines over a moment), so the report falls between two reads of the metric.
    let reported = io_errors(&agent, "disk1");
    let after = metric(&agent.metrics(), &format!("hotplug_watchdog_volume_io_errors_total{{{labels}}}"));
    assert!(counted <= reported && reported <= after, "report and metric agree: {counted} <= {reported} <= {after}");

    // The one-shot scan reads the kernel's buffer: the same errors, and more from before.
    let report = scan_json(&tree.root, std::path::Path::new("/proc/self/mountinfo"));
    assert!(volume_entry(&report, L, "disk1").unwrap()["io_errors"].as_f64().unwrap() >= counted);
}

#[test]
fn a_reader_that_falls_behind_recovers_and_counts_what_it_lost() {
    if !require_root("a_reader_that_falls_behind_recovers_and_counts_what_it_lost") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tree = KubeletTree::new();
    let ours = FailingDisk::new();
    tree.hotplugged(L, A, "disk1", ours.disk.dev());
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));

    // Userspace writes to /dev/kmsg are rate-limited by default; lift that for the flood.
    let _unlimited = Sysctl::set("/proc/sys/kernel/printk_devkmsg", "on");
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGSTOP).unwrap();
    // Far more than the kernel's log buffer holds.
    let filler = "x".repeat(200);
    for i in 0..40_000 {
        kmsg_write(&format!("hotplug-watchdog test filler {i} {filler}"));
    }
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGCONT).unwrap();
    agent.wait_until("lost records counted", Duration::from_secs(20), |a| {
        metric(&a.metrics(), "hotplug_watchdog_kmsg_lost_records_total") > 0.0
    });
    // Still reading: a new error counts.
    ours.fail_writes_until("a new error counted after the overrun", || io_errors(&agent, "disk1") >= 1.0);
    assert!(agent.log().contains("fell behind the kernel log"), "said in the log");
}
