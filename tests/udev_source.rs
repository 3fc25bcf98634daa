//! `--uevent-source udev`: events re-broadcast by a real systemd-udevd after its rules ran.
//! The test starts udevd itself (Debian package `udev`) unless one already runs.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const L: &str = "launcher-udev";
const A: &str = "attach-udev";

struct Udevd(Option<Child>);

impl Udevd {
    fn ensure() -> Self {
        let running = Command::new("pgrep").arg("-x").arg("systemd-udevd").status().is_ok_and(|s| s.success());
        if running {
            return Udevd(None);
        }
        let bin = ["/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("systemd-udevd (Debian package udev) must be installed");
        let child = Command::new(bin).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start systemd-udevd");
        // udevd listens once its control socket exists.
        for _ in 0..200 {
            if std::path::Path::new("/run/udev/control").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Udevd(Some(child))
    }
}

impl Drop for Udevd {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn udev_source_sees_devices_come_and_go() {
    if !require_root("udev_source_sees_devices_come_and_go") {
        return;
    }
    let _udevd = Udevd::ensure();
    let tree = KubeletTree::new();
    tree.launcher(L);
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h", "--uevent-source", "udev"]);
    agent.wait_ready();

    // The device is created after the agent's first scan.
    let mut disk = LoopDevice::add();
    tree.attachment(A);
    tree.attach_block(A, "v", disk.dev());
    tree.launcher_block(L, "v", disk.dev());
    agent.wait_volume(L, "v", Some("ready"));
    // udevd re-broadcasts after its rules ran: its add event may come after the node was
    // read (with the device's presence, so no false alarm in between).
    let uevents = |a: &Agent| metric(&a.metrics(), "hotplug_watchdog_source_events_total{source=\"uevent\"}");
    agent.wait_until("udev's add event", Duration::from_secs(10), |a| uevents(a) >= 1.0);
    let before = uevents(&agent);
    assert_eq!(metric(&agent.metrics(), "hotplug_watchdog_volume_transitions_total{state=\"vanished\"}"), 0.0);

    disk.remove();
    agent.wait_volume(L, "v", Some("vanished"));
    assert!(uevents(&agent) > before, "the removal came through udev");
}
