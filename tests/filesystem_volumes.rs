//! Filesystem-mode hotplug volumes: `disk.img` on a real loop-backed ext4, mounted where
//! the kubelet mounts an attachment pod's PVC and bind-mounted onto the launcher's
//! `<volume>.img` as virt-handler does. Mount changes reach the agent through mountinfo
//! POLLPRI only (inotify does not report mounts).

mod support;

use std::fs;

use support::*;

const L: &str = "launcher-fs";
const A: &str = "attach-fs";

/// A filesystem volume ready in the launcher: returns the loop device and the mounts.
struct FsVolume {
    pvc_mount: Option<Mounted>,
    image_mount: Option<Mounted>,
    disk: LoopDevice,
    _backing: tempfile::NamedTempFile,
}

fn set_up(tree: &KubeletTree, volume: &str) -> FsVolume {
    let backing = tempfile::NamedTempFile::new().unwrap();
    backing.as_file().set_len(16 << 20).unwrap();
    let mut disk = LoopDevice::add();
    disk.attach_file(backing.path());
    mkfs_ext4(&disk.path());
    // The kubelet mounts the attachment pod's PVC under the pod's volumes directory.
    let pvc_dir = tree.root.join(A).join("volumes/kubernetes.io~csi/pv-fs/mount");
    let pvc_mount = Mounted::filesystem(&disk.path(), &pvc_dir, "ext4");
    fs::write(pvc_dir.join("disk.img"), b"").unwrap();
    // virt-handler makes `<volume>.img` and bind-mounts disk.img onto it.
    let image = tree.launcher(L).join(format!("{volume}.img"));
    fs::write(&image, b"").unwrap();
    let image_mount = Mounted::bind(&pvc_dir.join("disk.img"), &image);
    FsVolume { pvc_mount: Some(pvc_mount), image_mount: Some(image_mount), disk, _backing: backing }
}

#[test]
fn filesystem_volume_ready_then_unmounted_then_unbacked() {
    if !require_root("filesystem_volume_ready_then_unmounted_then_unbacked") {
        return;
    }
    let tree = KubeletTree::new();
    tree.attachment(A);
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    let mut vol = set_up(&tree, "data");
    agent.wait_volume(L, "data", Some("ready"));
    let report = agent.report();
    let v = volume_entry(&report, L, "data").unwrap();
    assert_eq!(v["mode"], "filesystem");
    assert_eq!(v["device"], vol.disk.dev().to_string());
    assert_eq!(v["backing_pods"], serde_json::json!([A]));
    assert_eq!(handoff_safe(&report, A), Some(false));
    assert!(metric(&agent.metrics(), "hotplug_watchdog_source_events_total{source=\"mountinfo\"}") >= 1.0);

    // The attachment pod's PVC mount goes (the pod was deleted): the bind mount lives on,
    // nothing backs it.
    vol.pvc_mount.take().unwrap().unmount();
    agent.wait_volume(L, "data", Some("unbacked"));

    // The bind mount goes too: the launcher has an empty .img file again: not ready.
    vol.image_mount.take().unwrap().unmount();
    agent.wait_volume(L, "data", Some("pending"));
    assert_eq!(volume_entry(&agent.report(), L, "data").unwrap()["device"], serde_json::Value::Null);
    drop(vol);
}

/// FAKE, and why: a mounted loop device cannot be removed (LOOP_CTL_REMOVE answers EBUSY
/// while a filesystem is on it), so the kernel cannot show a bind mount whose device is
/// gone. The agent's mount-table path is configurable; this test gives it a mount table
/// written by hand whose device number has no /sys/dev/block entry, next to a real one.
#[test]
fn filesystem_volume_whose_device_is_gone_is_vanished() {
    let tree = KubeletTree::new();
    tree.attachment(A);
    let image = tree.launcher(L).join("data.img");
    fs::write(&image, b"").unwrap();
    let pvc = tree.root.join(A).join("volumes/kubernetes.io~csi/pv/mount");
    // 7:1048575 is a loop minor nobody creates.
    let gone = "7:1048575";
    let table = tempfile::NamedTempFile::new().unwrap();
    let present = {
        // A device that does exist on every machine: the root filesystem's.
        let st = nix::sys::stat::stat("/").unwrap();
        hotplug_watchdog::device::DevNum::from_raw(st.st_dev)
    };
    let write_table = |dev: &str| {
        fs::write(
            table.path(),
            format!(
                "1 0 {present} / / rw - ext4 /dev/root rw\n\
                 2 1 {dev} / {pvc} rw - ext4 /dev/x rw\n\
                 3 1 {dev} /disk.img {img} rw - ext4 /dev/x rw\n",
                pvc = pvc.display(),
                img = image.display()
            ),
        )
        .unwrap()
    };
    write_table(gone);
    let report = scan_json(&tree.root, table.path());
    assert_eq!(volume_state(&report, L, "data").as_deref(), Some("vanished"), "{report:#}");

    // The same table with a device that exists (only if / is on a block device here).
    if std::path::Path::new(&format!("/sys/dev/block/{present}")).exists() {
        write_table(&present.to_string());
        let report = scan_json(&tree.root, table.path());
        assert_eq!(volume_state(&report, L, "data").as_deref(), Some("ready"), "{report:#}");
    }

    // The daemon reads the same table on its rescans (a regular file never signals POLLPRI).
    write_table(gone);
    let agent = Agent::start_with_mountinfo(&tree.root, table.path(), &["--rescan-interval", "200ms"]);
    agent.wait_ready();
    agent.wait_volume(L, "data", Some("vanished"));
}

#[test]
fn kubelet_root_behind_a_symlink_is_followed_and_matched_in_the_mount_table() {
    if !require_root("kubelet_root_behind_a_symlink_is_followed_and_matched_in_the_mount_table") {
        return;
    }
    // /var/lib/kubelet on another disk through a symlink is common. The configured root
    // is followed; the mount table names the resolved path.
    let tree = KubeletTree::new();
    tree.attachment(A);
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("pods");
    std::os::unix::fs::symlink(&tree.root, &link).unwrap();
    let agent = Agent::start(&link, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    let _vol = set_up(&tree, "data");
    agent.wait_volume(L, "data", Some("ready"));
    let report = scan_json(&link, std::path::Path::new("/proc/self/mountinfo"));
    assert_eq!(volume_state(&report, L, "data").as_deref(), Some("ready"));
}
