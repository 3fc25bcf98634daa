//! Block-mode hotplug volumes on real loop devices, through the real agent binary:
//! pending -> ready, device removal seen through the uevent path, and the attachment-pod
//! swap with the same device (safe) and with a new device (unsafe).

mod support;

use std::time::Duration;

use support::*;

const L: &str = "launcher-0001";
const OLD: &str = "attach-old-0001";
const NEW: &str = "attach-new-0001";

/// A rescan period far beyond the test's length: whatever the agent sees, it saw through
/// its event sources.
const NO_PERIODIC_RESCAN: &[&str] = &["--rescan-interval", "1h"];

#[test]
fn block_volume_pending_then_ready_then_vanished_through_uevents() {
    if !require_root("block_volume_pending_then_ready_then_vanished_through_uevents") {
        return;
    }
    let tree = KubeletTree::new();
    let mut disk = LoopDevice::add();
    tree.launcher(L);
    let agent = Agent::start(&tree.root, NO_PERIODIC_RESCAN);
    agent.wait_ready();
    // A /watch client hears every transition, in order, as it is published.
    let mut watch = agent.watch();
    let heard = |watch: &mut WatchStream, state: &str| {
        watch.wait_for(L, "disk1", state, Duration::from_secs(10)).unwrap_or_else(|| panic!("/watch: no {state}"))
    };

    // The attachment pod appears with the PVC's device: pending in the only launcher.
    tree.attachment(OLD);
    tree.attach_block(OLD, "disk1", disk.dev());
    agent.wait_volume(L, "disk1", Some("pending"));
    let line = heard(&mut watch, "pending");
    assert_eq!(line["from"], serde_json::Value::Null, "a new volume: {line}");
    let report = agent.report();
    assert_eq!(volume_entry(&report, L, "disk1").unwrap()["backing_pods"], serde_json::json!([OLD]));

    // virt-handler mknods it into the launcher.
    tree.launcher_block(L, "disk1", disk.dev());
    agent.wait_volume(L, "disk1", Some("ready"));
    let report = agent.report();
    let v = volume_entry(&report, L, "disk1").unwrap();
    assert_eq!(v["device"], disk.dev().to_string());
    assert_eq!(v["mode"], "block");
    assert_eq!(handoff_safe(&report, OLD), Some(false), "the only pod serving a used device");

    // The device goes away under the VM: the kernel's remove uevent is the only signal.
    let events_before = metric(&agent.metrics(), "hotplug_watchdog_source_events_total{source=\"uevent\"}");
    disk.remove();
    let line = heard(&mut watch, "vanished");
    assert_eq!((line["from"].as_str(), line["device"].as_str()), (Some("ready"), Some(&*disk.dev().to_string())));
    assert_eq!(volume_state(&agent.report(), L, "disk1").as_deref(), Some("vanished"), "published before told");
    let m = agent.metrics();
    assert!(
        metric(&m, "hotplug_watchdog_source_events_total{source=\"uevent\"}") > events_before,
        "seen through a uevent"
    );
    assert_eq!(metric(&m, "hotplug_watchdog_rescans_total{reason=\"periodic\"}"), 0.0);
    let labels = format!("pod_uid=\"{L}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"");
    assert_eq!(metric(&m, &format!("hotplug_watchdog_device_vanished_total{{{labels}}}")), 1.0);
    assert_eq!(metric(&m, &format!("hotplug_watchdog_volume_device_present{{{labels}}}")), 0.0);
    assert_eq!(metric(&m, &format!("hotplug_watchdog_volume_state{{{labels},state=\"vanished\"}}")), 1.0);
    assert_eq!(metric(&m, &format!("hotplug_watchdog_volume_state{{{labels},state=\"ready\"}}")), 0.0);
    assert!(metric(&m, "hotplug_watchdog_volume_time_to_ready_seconds_count") >= 1.0);
    assert!(metric(&m, "hotplug_watchdog_detection_latency_seconds_count{state=\"vanished\"}") >= 1.0);

    // A new disk is created under the same number (the kernel reuses it): the launcher's
    // node would reach the wrong disk. Replaced, never ready.
    let _reused = LoopDevice::re_add(disk.index);
    agent.wait_volume(L, "disk1", Some("replaced"));
    let m = agent.metrics();
    assert_eq!(metric(&m, &format!("hotplug_watchdog_device_replaced_total{{{labels}}}")), 1.0);
    assert_eq!(metric(&m, &format!("hotplug_watchdog_device_vanished_total{{{labels}}}")), 1.0);
    assert_eq!(metric(&m, &format!("hotplug_watchdog_volume_state{{{labels},state=\"ready\"}}")), 0.0);

    heard(&mut watch, "replaced");

    // An open /watch stream does not hold up a shutdown; it ends with it.
    let status = agent.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    assert!(watch.next(Duration::from_secs(5)).is_none(), "the stream ends at shutdown");
}

#[test]
fn swap_to_a_pod_with_the_same_device_is_safe() {
    if !require_root("swap_to_a_pod_with_the_same_device_is_safe") {
        return;
    }
    // Kernel rbd, one LUN: the new attachment pod exposes the very same device.
    let tree = KubeletTree::new();
    let disk = LoopDevice::add();
    let second = LoopDevice::add();
    tree.hotplugged(L, OLD, "disk1", disk.dev());
    let agent = Agent::start(&tree.root, NO_PERIODIC_RESCAN);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));
    agent.wait_handoff(OLD, false);

    // Adding disk2: the controller makes a new pod holding both volumes.
    tree.attachment(NEW);
    tree.attach_block(NEW, "disk1", disk.dev());
    tree.attach_block(NEW, "disk2", second.dev());
    agent.wait_handoff(OLD, true);
    agent.wait_volume(L, "disk2", Some("pending"));

    // The old pod goes: nothing changes for disk1.
    tree.remove_pod(OLD);
    tree.launcher_block(L, "disk2", second.dev());
    agent.wait_volume(L, "disk2", Some("ready"));
    assert_eq!(volume_state(&agent.report(), L, "disk1").as_deref(), Some("ready"));
    assert_eq!(handoff_safe(&agent.report(), OLD), None, "the old pod is gone from the report");
    assert_eq!(metric(&agent.metrics(), "hotplug_watchdog_volume_transitions_total{state=\"vanished\"}"), 0.0);
}

#[test]
fn swap_to_a_pod_with_a_new_device_is_unsafe_then_unbacked_then_vanished() {
    if !require_root("swap_to_a_pod_with_a_new_device_is_unsafe_then_unbacked_then_vanished") {
        return;
    }
    // nbd / NVMe-oF / iSCSI: each attachment pod gets its own device for the same PVC.
    let tree = KubeletTree::new();
    let mut old_dev = LoopDevice::add();
    let new_dev = LoopDevice::add();
    tree.hotplugged(L, OLD, "disk1", old_dev.dev());
    let agent = Agent::start(&tree.root, NO_PERIODIC_RESCAN);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));

    tree.attachment(NEW);
    tree.attach_block(NEW, "disk1", new_dev.dev());
    agent.wait_until("new pod reported", Duration::from_secs(10), |a| handoff_safe(&a.report(), NEW).is_some());
    let report = agent.report();
    assert_eq!(handoff_safe(&report, OLD), Some(false), "deleting the old pod would orphan the launcher's device");
    assert_eq!(handoff_safe(&report, NEW), Some(true));
    let old = report["attachment_pods"].as_array().unwrap().iter().find(|p| p["pod_uid"] == OLD).unwrap();
    assert_eq!(old["sole_backer_of"], serde_json::json!([format!("{L}/disk1")]));

    // Today's controller deletes the old pod anyway: the launcher's node is unbacked ...
    tree.remove_pod(OLD);
    agent.wait_volume(L, "disk1", Some("unbacked"));
    // ... and once the storage driver tears the old device down, vanished.
    old_dev.remove();
    agent.wait_volume(L, "disk1", Some("vanished"));
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            &format!(
                "hotplug_watchdog_device_vanished_total{{pod_uid=\"{L}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"}}"
            )
        ),
        1.0
    );
}

/// A disk image with an MBR partition table of one partition (sectors 2048..4095), written
/// by hand so that no partitioning tool is needed.
fn partitioned_image(path: &std::path::Path) {
    let mut mbr = vec![0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83; // Linux
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&2048u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0).unwrap();
}

fn partx(args: &[&str], disk: &LoopDevice) {
    let out = std::process::Command::new("partx").args(args).arg(disk.path()).output().expect("run partx (util-linux)");
    assert!(out.status.success(), "partx {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A hotplugged partition keeps its identity whether the agent reads it from a uevent or
/// from sysfs: a `change` uevent or a partition-table reread is no "replaced" disk. (Before
/// the fix, the uevent's identity lacked the partition number and the volume turned
/// `replaced` on the first `change`.)
#[test]
fn a_partition_is_not_replaced_by_a_change_uevent_or_a_table_reread() {
    if !require_root("a_partition_is_not_replaced_by_a_change_uevent_or_a_table_reread") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    partitioned_image(&image);
    let mut disk = LoopDevice::add();
    disk.attach_file(&image);
    // Partitions added through BLKPG, as a partition-table reread does (this kernel may not
    // scan tables itself).
    partx(&["-a"], &disk);
    let sys = format!("/sys/class/block/loop{}p1", disk.index);
    let part: hotplug_watchdog::device::DevNum =
        std::fs::read_to_string(format!("{sys}/dev")).unwrap().trim().parse().unwrap();

    let tree = KubeletTree::new();
    tree.hotplugged(L, OLD, "disk1", part);
    let agent = Agent::start(&tree.root, NO_PERIODIC_RESCAN);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));
    let labels = format!("pod_uid=\"{L}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"");
    let replaced = format!("hotplug_watchdog_device_replaced_total{{{labels}}}");

    // A change uevent on the partition (udev rules, a resize, a tool asking for one).
    let uevents = |a: &Agent| metric(&a.metrics(), "hotplug_watchdog_source_events_total{source=\"uevent\"}");
    let before = uevents(&agent);
    std::fs::write(format!("{sys}/uevent"), "change").unwrap();
    agent.wait_until("the change uevent", Duration::from_secs(10), |a| uevents(a) > before);
    assert_eq!(volume_state(&agent.report(), L, "disk1").as_deref(), Some("ready"));
    assert_eq!(metric_opt(&agent.metrics(), &replaced), None, "a change is not another disk");

    // A change uevent on the whole disk (what a table reread sends for it).
    let before = uevents(&agent);
    std::fs::write(format!("/sys/class/block/loop{}/uevent", disk.index), "change").unwrap();
    agent.wait_until("the disk's change uevent", Duration::from_secs(10), |a| uevents(a) > before);
    assert_eq!(volume_state(&agent.report(), L, "disk1").as_deref(), Some("ready"));

    // The partition table read again: the partition goes and comes back on the same disk.
    // Loop partitions take extended device numbers, which the kernel may not hand out
    // again at once: the VM's node then points at a number that is gone (vanished, the
    // truth), and where the number comes back it is the same disk (ready). Never replaced.
    partx(&["-d"], &disk);
    agent.wait_volume(L, "disk1", Some("vanished"));
    partx(&["-a"], &disk);
    let again: hotplug_watchdog::device::DevNum =
        std::fs::read_to_string(format!("{sys}/dev")).unwrap().trim().parse().unwrap();
    let expected = if again == part { "ready" } else { "vanished" };
    agent.wait_volume(L, "disk1", Some(expected));
    assert_eq!(metric_opt(&agent.metrics(), &replaced), None, "same disk, same partition: {part} -> {again}");
    partx(&["-d"], &disk);
    disk.remove();
}

/// The counters of a volume that is gone stay exported for `--gone-series-for`, then their
/// series go: the number of series follows the volumes there are, not every volume there
/// ever was on the node.
#[test]
fn a_gone_volumes_counters_are_removed_after_a_while() {
    if !require_root("a_gone_volumes_counters_are_removed_after_a_while") {
        return;
    }
    let tree = KubeletTree::new();
    let mut disk = LoopDevice::add();
    tree.hotplugged(L, OLD, "disk1", disk.dev());
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h", "--gone-series-for", "2s"]);
    agent.wait_ready();
    agent.wait_volume(L, "disk1", Some("ready"));
    disk.remove();
    agent.wait_volume(L, "disk1", Some("vanished"));
    let series = format!(
        "hotplug_watchdog_device_vanished_total{{pod_uid=\"{L}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"}}"
    );
    assert_eq!(metric(&agent.metrics(), &series), 1.0);
    // The VM's launcher goes: the volume is gone; its counter stays a while.
    tree.remove_pod(L);
    agent.wait_volume(L, "disk1", None);
    assert_eq!(metric(&agent.metrics(), &series), 1.0, "kept for alerts to see");
    std::thread::sleep(Duration::from_millis(2500));
    // Pruning happens with the engine's next batch: any event will do.
    tree.launcher("launcher-other");
    agent.wait_until("the gone volume's counter removed", Duration::from_secs(10), |a| {
        metric_opt(&a.metrics(), &series).is_none()
    });
}
