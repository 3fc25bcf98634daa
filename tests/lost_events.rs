//! Lost events, produced for real and repaired by the rescan: a netlink receive buffer
//! that overflows (`ENOBUFS`) and an inotify queue that overflows (`IN_Q_OVERFLOW`).
//! The agent is stopped (SIGSTOP) during the burst so that its buffers fill for certain,
//! and the change that matters is made last, when its event is the one dropped.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

const L: &str = "launcher-lost";
const A: &str = "attach-lost";

/// The inotify test changes a machine-wide sysctl: keep the tests of this file apart.
static SERIAL: Mutex<()> = Mutex::new(());

fn pause(agent: &Agent, sig: Signal) {
    kill(Pid::from_raw(agent_pid(agent)), sig).unwrap();
}

fn agent_pid(agent: &Agent) -> i32 {
    agent.pid() as i32
}

fn assert_same_as_fresh_scan(agent: &Agent, tree: &KubeletTree) {
    let fresh = scan_json(&tree.root, std::path::Path::new("/proc/self/mountinfo"));
    let live = agent.report();
    assert_eq!(live["volumes"], fresh["volumes"], "live verdicts differ from a fresh scan");
    assert_eq!(live["attachment_pods"], fresh["attachment_pods"]);
}

#[test]
fn uevent_buffer_overflow_is_repaired_by_a_rescan() {
    if !require_root("uevent_buffer_overflow_is_repaired_by_a_rescan") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tree = KubeletTree::new();
    let mut disk = LoopDevice::add();
    tree.hotplugged(L, A, "disk1", disk.dev());
    // The kernel rounds a tiny buffer up to its minimum (a few KiB): a dozen uevents.
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h", "--uevent-buffer-bytes", "1"]);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));

    pause(&agent, Signal::SIGSTOP);
    for _ in 0..60 {
        let mut other = LoopDevice::add();
        other.remove();
    }
    disk.remove(); // its remove uevent finds the buffer full
    pause(&agent, Signal::SIGCONT);

    agent.wait_volume(L, "disk1", Some("vanished"));
    let m = agent.metrics();
    assert!(metric(&m, "hotplug_watchdog_rescans_total{reason=\"uevent_overflow\"}") >= 1.0, "{m}");
    assert_same_as_fresh_scan(&agent, &tree);
}

#[test]
fn inotify_queue_overflow_is_repaired_by_a_rescan() {
    if !require_root("inotify_queue_overflow_is_repaired_by_a_rescan") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tree = KubeletTree::new();
    let disk = LoopDevice::add();
    tree.launcher(L);
    tree.attachment(A);
    tree.attach_block(A, "v0", disk.dev());
    // The queue limit is taken when the agent creates its inotify instance; restored as
    // soon as the agent is up.
    let agent = {
        let _low = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "16");
        Agent::start(&tree.root, &["--rescan-interval", "1h"])
    };
    agent.wait_ready();
    agent.wait_volume(L, "v0", Some("pending"));

    pause(&agent, Signal::SIGSTOP);
    for i in 0..100 {
        tree.launcher_block(L, format!("v{i}"), disk.dev());
    }
    pause(&agent, Signal::SIGCONT);

    agent.wait_until("100 ready volumes", Duration::from_secs(10), |a| {
        a.report()["volumes"].as_array().unwrap().iter().filter(|v| v["state"] == "ready").count() == 100
    });
    let m = agent.metrics();
    assert!(metric(&m, "hotplug_watchdog_rescans_total{reason=\"inotify_overflow\"}") >= 1.0, "{m}");
    assert_same_as_fresh_scan(&agent, &tree);
}
