//! The middle tier: the engine, the metrics and the report in-process on a fixture node
//! (a temp kubelet tree, a sysfs directory and a mount table written here), checked
//! against golden `/scan` and `/metrics` output. No root, no loop device, no API server:
//! filesystem volumes need only files and mount-table lines, and the API's word comes as
//! the objects the watches would hold. The real-device and real-API tests stay; this tier
//! pins what the agent says, to the byte, for every state and reason it can say.
//!
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the files in tests/golden/; read the
//! diff before committing it: it is the agent's output changing.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotplug_watchdog::cluster::objects::{PodObject, VmiObject, WatchedPod, WatchedVmi};
use hotplug_watchdog::cluster::view::ClusterView;
use hotplug_watchdog::engine::Engine;
use hotplug_watchdog::metrics::{Exposition, Metrics};
use hotplug_watchdog::report::Report;
use hotplug_watchdog::snapshot::{Snapshot, Snapshots};
use hotplug_watchdog::sources::channel::{channel, Sender, CAPACITY};
use hotplug_watchdog::sources::health::Health;
use hotplug_watchdog::sources::{Message, NodePaths, RescanReason, SeqClock};
use serde_json::json;

const HOTPLUG: &str = "volumes/kubernetes.io~empty-dir/hotplug-disks";

/// The fixture node. Launcher `l1` runs vm1 with four filesystem volumes:
/// - `fs1` on 8:16, served by the old attachment pod `a1` and the new one `a2`: ready;
/// - `fs2` on 8:32, served by `a1` only: ready, and `a1` is its sole backer;
/// - `fs3` on 8:48, which the kernel no longer shows: vanished;
/// - `fs4` on 8:64, which no attachment pod serves: unbacked.
///
/// Launcher `l2` (vm2) has `fs5.img` with nothing mounted on it yet (pending) and its
/// attachment pod `a3`. Pod `x9` is a tenant's pod with an `hp.sock` and a mount of 8:16
/// in its volumes: an intruder the API does not confirm. `l1` also holds a utility
/// directory, a FIFO and a symlink out of the tree (passed over, never followed).
struct Node {
    dir: tempfile::TempDir,
    paths: NodePaths,
    _sockets: Vec<UnixListener>,
}

impl Node {
    fn build() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pods");
        let sysfs = dir.path().join("sys");
        let mut sockets = Vec::new();
        for (uid, images) in [("l1", &["fs1", "fs2", "fs3", "fs4"][..]), ("l2", &["fs5"][..])] {
            let hp = root.join(uid).join(HOTPLUG);
            fs::create_dir_all(&hp).unwrap();
            for image in images {
                fs::write(hp.join(format!("{image}.img")), b"").unwrap();
            }
        }
        let l1 = root.join("l1").join(HOTPLUG);
        fs::create_dir(l1.join("memory-dump")).unwrap();
        nix::unistd::mkfifo(&l1.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc", l1.join("escape")).unwrap();
        for uid in ["a1", "a2", "a3", "x9"] {
            let hp = root.join(uid).join(HOTPLUG);
            fs::create_dir_all(&hp).unwrap();
            sockets.push(UnixListener::bind(hp.join("hp.sock")).unwrap());
        }
        for dev in ["8:16", "8:32", "8:64"] {
            fs::create_dir_all(sysfs.join("dev/block").join(dev)).unwrap();
        }
        fs::write(sysfs.join("dev/block/8:16/diskseq"), "16\n").unwrap();
        // The mount table: this process's own (so that the kubelet root resolves the same
        // in both mount namespaces, as in a DaemonSet that mounts the host's), then the
        // fixture's mounts.
        let mut mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut id = 90_000;
        let mut mount = |dev: &str, at: PathBuf| {
            id += 1;
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            mountinfo
                .push_str(&format!("{id} 1 {dev} / {} rw,relatime shared:1 - ext4 /dev/fixture rw\n", at.display()));
        };
        let pvc = |uid: &str, pv: &str| root.join(uid).join("volumes/kubernetes.io~csi").join(pv).join("mount");
        for (image, dev) in [("fs1", "8:16"), ("fs2", "8:32"), ("fs3", "8:48"), ("fs4", "8:64")] {
            mount(dev, l1.join(format!("{image}.img")));
        }
        mount("8:16", pvc("a1", "pv-fs1"));
        mount("8:32", pvc("a1", "pv-fs2"));
        mount("8:16", pvc("a2", "pv-fs1"));
        mount("8:16", pvc("x9", "pv-evil"));
        let mountinfo_path = dir.path().join("mountinfo");
        fs::write(&mountinfo_path, mountinfo).unwrap();
        let paths =
            NodePaths { kubelet_root: root.clone(), mountinfo_kubelet_root: root, sysfs, mountinfo: mountinfo_path };
        Node { dir, paths, _sockets: sockets }
    }
}

/// The engine on its own thread, fed by hand as the sources and the watches would.
struct InProcess {
    tx: Sender,
    snapshots: Snapshots,
    metrics: Arc<Metrics>,
}

impl InProcess {
    fn start(node: &Node) -> InProcess {
        let (tx, rx) = channel(CAPACITY);
        let (snapshot_tx, snapshots) = tokio::sync::watch::channel(Arc::default());
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new(snapshots.clone(), health.clone()));
        let engine = Engine::new(
            node.paths.clone(),
            Arc::new(SeqClock::default()),
            metrics.clone(),
            snapshot_tx,
            health.clone(),
            Duration::from_secs(3600),
        );
        let hb = health.register("engine");
        std::thread::spawn(move || engine.run(rx, hb));
        InProcess { tx, snapshots, metrics }
    }

    /// Sends `msg` and waits for the first snapshot that `ready` accepts.
    fn after(&mut self, msg: Message, ready: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        self.tx.send(msg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.snapshots.borrow_and_update().clone();
            if ready(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "the engine never published the expected snapshot");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What the API server would hold for the fixture: vm1 with its launcher `l1` and the
/// attachment pods `a1` (older) and `a2` (newer); vm2 with `l2` and `a3`. `x9` is a pod of
/// another namespace claiming to be vm1's attachment pod.
fn cluster_view() -> ClusterView {
    let launcher = |uid: &str, vmi: &str, vmi_uid: &str| -> PodObject {
        serde_json::from_value(json!({"metadata": {
            "name": format!("virt-launcher-{vmi}-{uid}"), "namespace": "vms", "uid": uid,
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi_uid},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "name": vmi, "uid": vmi_uid, "controller": true}]},
            "status": {"phase": "Running"}}))
        .unwrap()
    };
    let attachment = |uid: &str, ns: &str, owner: &str, created: &str| -> PodObject {
        serde_json::from_value(json!({"metadata": {
            "name": format!("hp-volume-{uid}"), "namespace": ns, "uid": uid, "creationTimestamp": created,
            "labels": {"kubevirt.io": "hotplug-disk"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "launcher", "uid": owner, "controller": true}]},
            "status": {"phase": "Running"}}))
        .unwrap()
    };
    let vmi = |name: &str, uid: &str, volumes: &[&str]| -> VmiObject {
        let volumes: Vec<_> = volumes.iter().map(|v| json!({"name": v})).collect();
        serde_json::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "vms", "uid": uid},
            "spec": {"volumes": volumes}, "status": {"phase": "Running"}}))
        .unwrap()
    };
    let pods = [
        launcher("l1", "vm1", "v1"),
        launcher("l2", "vm2", "v2"),
        attachment("a1", "vms", "l1", "2026-11-30T06:00:00Z"),
        attachment("a2", "vms", "l1", "2026-11-30T06:05:00Z"),
        attachment("a3", "vms", "l2", "2026-11-30T06:00:00Z"),
        attachment("x9", "tenant", "l1", "2026-11-30T06:10:00Z"),
    ];
    let vmis = [vmi("vm1", "v1", &["rootdisk", "fs1", "fs2", "fs3", "fs4"]), vmi("vm2", "v2", &["rootdisk", "fs5"])];
    // As the watches keep them: only the fields the agent reads.
    let pods: Vec<_> = pods.into_iter().map(|p| WatchedPod::from(p).meta).collect();
    let vmis: Vec<_> = vmis.into_iter().map(|v| WatchedVmi::new(v, false).meta).collect();
    ClusterView::build(&pods, &vmis)
}

/// The `/scan` body, indented for a readable diff, with the temp directory written as
/// `<tmp>`.
fn scan_json(node: &Node, s: &Snapshot) -> String {
    let report = Report::new(&s.verdicts, &s.names, &s.skipped, &s.io_errors).to_json();
    let value: serde_json::Value = serde_json::from_str(&report).unwrap();
    let pretty = serde_json::to_string_pretty(&value).unwrap() + "\n";
    pretty.replace(node.dir.path().to_str().unwrap(), "<tmp>")
}

/// The `/metrics` body without what depends on time (histograms of durations), each
/// family's series sorted (a family keeps them in a hash map: any order is right).
fn metrics_text(p: &InProcess) -> String {
    let text = p.metrics.encode(Exposition::PrometheusText);
    let (mut out, mut series) = (String::new(), Vec::new());
    for line in text.lines().filter(|l| !l.contains("_seconds")) {
        if line.starts_with('#') {
            series.sort();
            out.extend(series.drain(..).map(|l| format!("{l}\n")));
            out.push_str(line);
            out.push('\n');
        } else {
            series.push(line);
        }
    }
    series.sort();
    out.extend(series.drain(..).map(|l| format!("{l}\n")));
    out
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; UPDATE_GOLDEN=1 writes it", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs from the agent's output (first differing line {:?}); UPDATE_GOLDEN=1 rewrites it, then read the diff.\n--- actual ---\n{actual}",
            path.display(),
            first.map(|i| i + 1)
        );
    }
}

fn state_of(s: &Snapshot, launcher: &str, volume: &str) -> Option<&'static str> {
    s.verdicts
        .volumes
        .iter()
        .find(|(k, _)| *k.launcher == *launcher && k.volume == volume)
        .map(|(_, v)| v.state.as_str())
}

fn handoff_of(s: &Snapshot, pod: &str) -> Option<&'static str> {
    s.verdicts.attachment_pods.iter().find(|(uid, _)| ***uid == *pod).map(|(_, a)| a.handoff.as_str())
}

#[test]
fn standalone_scan_and_metrics_match_the_golden_files() {
    let node = Node::build();
    let mut p = InProcess::start(&node);
    let s = p.after(Message::Rescan(RescanReason::WatchesReady), |s| s.verdicts.full_scan);
    // The states the fixture was built for, said plainly before the golden comparison.
    for (volume, state) in [("fs1", "ready"), ("fs2", "ready"), ("fs3", "vanished"), ("fs4", "unbacked")] {
        assert_eq!(state_of(&s, "l1", volume), Some(state), "{volume}");
    }
    assert_eq!(state_of(&s, "l2", "fs5"), Some("pending"));
    assert_eq!(s.skipped.len(), 2, "the FIFO and the symlink: {:?}", s.skipped);
    golden("standalone-scan.json", &scan_json(&node, &s));
    golden("standalone-metrics.txt", &metrics_text(&p));
}

#[test]
fn cluster_scan_and_metrics_match_the_golden_files() {
    let node = Node::build();
    let mut p = InProcess::start(&node);
    p.after(Message::Rescan(RescanReason::WatchesReady), |s| s.verdicts.full_scan);
    let s = p.after(Message::Cluster(Box::new(cluster_view())), |s| s.verdicts.roles_from_api);
    // The old pod alone serves fs2's device: deleting it would tear the disk down. The new
    // pod serves fs1 with the old one... and fs2 not at all, so it is the current pod that
    // stays; the intruder decides nothing.
    assert_eq!(handoff_of(&s, "a1"), Some("SoleBacker"));
    assert_eq!(handoff_of(&s, "a3"), Some("FilesystemVolumePending"));
    assert_eq!(handoff_of(&s, "x9"), None);
    assert!(s.verdicts.unconfirmed.contains("x9"));
    golden("cluster-scan.json", &scan_json(&node, &s));
    golden("cluster-metrics.txt", &metrics_text(&p));
}
