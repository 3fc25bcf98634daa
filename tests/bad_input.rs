//! Bad input in the watched tree and in the configuration: never a crash, never a
//! followed symlink, always a clear error or a reported skip.

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use support::*;

const L: &str = "launcher-bad";
const A: &str = "attach-bad";

fn skipped_reasons(report: &serde_json::Value, path_ends_with: &str) -> Vec<String> {
    report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with(path_ends_with))
        .map(|s| s["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn odd_entries_are_skipped_and_symlinks_never_followed() {
    if !require_root("odd_entries_are_skipped_and_symlinks_never_followed") {
        return;
    }
    let tree = KubeletTree::new();
    let disk = LoopDevice::add();
    let hp = tree.launcher(L);
    tree.attachment(A);
    tree.attach_block(A, "good", disk.dev());
    tree.launcher_block(L, "good", disk.dev());

    // Outside the tree: a directory with a real block node, and the device itself.
    let outside = tempfile::tempdir().unwrap();
    make_block_node(&outside.path().join("evil"), disk.dev());
    fs::create_dir_all(outside.path().join("hotplug-disks")).unwrap();
    make_block_node(&outside.path().join("hotplug-disks/stolen"), disk.dev());

    symlink(disk.path(), hp.join("sym-to-dev")).unwrap();
    symlink(outside.path().join("evil"), hp.join("sym-to-node")).unwrap();
    nix::unistd::mkfifo(&hp.join("fifo-vol"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    fs::write(hp.join("regular-vol"), b"not a device").unwrap();
    fs::write(hp.join(os(b"bad-\xff-name")), b"").unwrap();
    // Names a volume can't have in Kubernetes, but a tree can: reported, escaped.
    tree.launcher_block(L, "new\nline", disk.dev());
    tree.launcher_block(L, "quo\"te\\", disk.dev());
    // A name that would forge a log line and repaint a terminal if logged as it is.
    tree.launcher_block(L, "forged\n2026-01-01T00:00:00.000000Z  WARN fake: disk lost\u{1b}[2J", disk.dev());
    // A pod whose hotplug-disks is a symlink out of the tree, and a pod directory that is one.
    let sym_pod = tree.root.join("sym-pod/volumes/kubernetes.io~empty-dir");
    fs::create_dir_all(&sym_pod).unwrap();
    symlink(outside.path().join("hotplug-disks"), sym_pod.join("hotplug-disks")).unwrap();
    symlink(outside.path(), tree.root.join("sym-pod-dir")).unwrap();

    let check = |report: &serde_json::Value| {
        assert_eq!(volume_state(report, L, "good").as_deref(), Some("ready"));
        assert_eq!(volume_state(report, L, "new\nline").as_deref(), Some("ready"));
        assert_eq!(volume_state(report, L, "quo\"te\\").as_deref(), Some("ready"));
        for name in ["sym-to-dev", "sym-to-node", "fifo-vol", "regular-vol", "stolen", "evil"] {
            assert_eq!(volume_entry(report, L, name), None, "{name} must not be a volume");
        }
        assert_eq!(skipped_reasons(report, "sym-to-dev"), ["symlink (never followed)"]);
        assert_eq!(skipped_reasons(report, "sym-to-node"), ["symlink (never followed)"]);
        assert_eq!(
            skipped_reasons(report, "fifo-vol"),
            ["FIFO, socket or character device where a volume was expected"]
        );
        assert_eq!(skipped_reasons(report, "regular-vol"), ["regular file without the .img suffix"]);
        assert_eq!(
            skipped_reasons(report, "sym-pod/volumes/kubernetes.io~empty-dir/hotplug-disks"),
            ["symlink (never followed)"]
        );
        assert_eq!(skipped_reasons(report, "sym-pod-dir"), ["symlink (never followed)"]);
        assert_eq!(
            report["skipped"].as_array().unwrap().iter().filter(|s| s["reason"] == "name is not UTF-8").count(),
            1
        );
        let volumes: Vec<&str> =
            report["volumes"].as_array().unwrap().iter().map(|v| v["pod_uid"].as_str().unwrap()).collect();
        assert!(volumes.iter().all(|p| *p == L), "only the launcher has volumes: {volumes:?}");
    };
    check(&scan_json(&tree.root, std::path::Path::new("/proc/self/mountinfo")));

    let agent = Agent::start(&tree.root, &[]);
    agent.wait_ready();
    check(&agent.report());
    let m = agent.metrics();
    assert_eq!(metric(&m, "hotplug_watchdog_skipped_entries{reason=\"symlink\"}"), 4.0);
    // The exposition stays valid with newlines and quotes in label values.
    promtool_check_metrics(&m);
    assert!(m.contains(r#"volume="new\nline""#) && m.contains(r#"volume="quo\"te\\""#), "{m}");

    // The table escapes them too: one line per volume.
    let out = Command::new(agent_binary())
        .args(["scan", "--mountinfo", "/proc/self/mountinfo", "--kubelet-root"])
        .arg(&tree.root)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(r"new\nline") && !table.contains("new\nline"), "{table}");

    // Text logs escape names: the forged line stays inside the line that names it.
    let log = agent.log();
    assert!(log.contains(r"forged\n2026-01-01T00:00:00.000000Z  WARN fake: disk lost\u{1b}[2J"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01T00:00:00")), "a forged log line: {log}");
    assert!(!log.contains('\u{1b}'), "an escape sequence reached the log: {log}");
}

fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Watches the agent holds: the `inotify wd:` lines of its inotify descriptors.
fn inotify_watches(pid: u32) -> usize {
    let mut n = 0;
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify")) {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
            n += info.lines().filter(|l| l.starts_with("inotify wd:")).count();
        }
    }
    n
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A tenant controls what its pods' emptyDirs hold: 100,000 empty `*.img` files and deep
/// directory trees in one launcher's hotplug-disks. The agent reads 1,024 entries of a
/// directory, says once that it stopped, and a neighbour's volume is judged as before;
/// series, inotify watches and memory stay bounded. (Before the cap the agent made 7
/// series, a map entry and a warning per entry: 700,171 series and 98.8 MiB, issue #13.)
#[test]
fn a_flooded_emptydir_is_read_up_to_a_bound_and_the_neighbour_still_judged() {
    if !require_root("a_flooded_emptydir_is_read_up_to_a_bound_and_the_neighbour_still_judged") {
        return;
    }
    const NEIGHBOUR: &str = "launcher-neighbour";
    const NEIGHBOUR_POD: &str = "attach-neighbour";
    let tree = KubeletTree::new();
    let hp = tree.launcher(L);
    for i in 0..100_000 {
        fs::File::create(hp.join(format!("flood-{i}.img"))).unwrap();
    }
    // Deep trees: one chain 200 levels down, and 2,000 directories with one below each.
    let mut deep = hp.join("deep");
    for _ in 0..200 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    for i in 0..2_000 {
        fs::create_dir_all(hp.join(format!("tree-{i}/sub"))).unwrap();
    }
    let mut disk = LoopDevice::add();
    tree.hotplugged(NEIGHBOUR, NEIGHBOUR_POD, "disk1", disk.dev());

    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    agent.wait_volume(NEIGHBOUR, "disk1", Some("ready"));
    let report = agent.report();
    let flooded = report["volumes"].as_array().unwrap().iter().filter(|v| v["pod_uid"] == L).count();
    assert!(flooded <= hotplug_watchdog::layout::MAX_ENTRIES, "{flooded} volumes judged in the flooded pod");
    assert_eq!(skipped_reasons(&report, "launcher-bad/volumes/kubernetes.io~empty-dir/hotplug-disks").len(), 1);
    let m = agent.metrics();
    let series = m.lines().filter(|l| l.starts_with("hotplug_watchdog_")).count();
    let watches = inotify_watches(agent.pid());
    assert_eq!(metric(&m, "hotplug_watchdog_skipped_entries{reason=\"too_many_entries\"}"), 1.0);
    assert_eq!(agent.log().matches("more than 1024 entries").count(), 1, "said once");
    promtool_check_metrics(&m);

    // The neighbour is judged as before: its device goes, the agent says so.
    disk.remove();
    agent.wait_volume(NEIGHBOUR, "disk1", Some("vanished"));
    let rss = peak_rss_kib(agent.pid());
    println!(
        "flooded emptyDir: {flooded} volumes judged, {series} series, {watches} inotify watches, peak RSS {} KiB",
        rss
    );
    // Bounds: 1,024 entries per directory make at most 8 series each, plus the agent's
    // own; a pod's watches are its 4 directories down to hotplug-disks and at most 1,024
    // volume directories.
    assert!(series <= 1_025 * 8 + 400, "{series} series");
    assert!(watches <= 1 + 2 * 4 + 1_024 + 1, "{watches} inotify watches");
    assert!(rss <= 64 * 1024, "peak RSS {rss} KiB");
}

#[test]
fn unreadable_directory_is_reported_and_the_rest_still_scanned() {
    if !require_root("unreadable_directory_is_reported_and_the_rest_still_scanned") {
        return;
    }
    // Root reads everything; the scan runs as nobody to meet a permission wall.
    let tree = KubeletTree::new();
    let disk = LoopDevice::add();
    tree.hotplugged("readable", A, "v", disk.dev());
    let locked = tree.launcher("locked");
    // The temp dir is 0700; open it (and everything in the tree) to others.
    let temp_dir = tree.root.parent().unwrap();
    fs::set_permissions(temp_dir, fs::Permissions::from_mode(0o755)).unwrap();
    for sub in walk(&tree.root) {
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();

    use std::os::unix::process::CommandExt;
    let out = Command::new(agent_binary())
        .args(["scan", "--format", "json", "--mountinfo", "/proc/self/mountinfo", "--kubelet-root"])
        .arg(&tree.root)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(volume_state(&report, "readable", "v").as_deref(), Some("ready"));
    assert_eq!(
        skipped_reasons(&report, "locked/volumes/kubernetes.io~empty-dir/hotplug-disks"),
        ["unreadable: EACCES: Permission denied"]
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn kubelet_root_that_does_not_exist_yet_is_waited_for() {
    if !require_root("kubelet_root_that_does_not_exist_yet_is_waited_for") {
        return;
    }
    let tree = KubeletTree::without_root();
    let agent = Agent::start(&tree.root, &["--rescan-interval", "1h"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.get("/readyz").0, 503, "not ready before the kubelet root exists");
    assert_eq!(agent.get("/healthz").0, 200, "waiting is healthy");
    assert!(agent.log().contains("cannot watch the kubelet pods directory yet"), "{}", agent.log());

    let disk = LoopDevice::add();
    fs::create_dir(&tree.root).unwrap();
    tree.hotplugged(L, A, "v", disk.dev());
    agent.wait_ready();
    agent.wait_volume(L, "v", Some("ready"));

    // The scan command says plainly what is wrong.
    let out = Command::new(agent_binary()).args(["scan", "--kubelet-root", "/nonexistent/pods"]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "hotplug-watchdog: kubelet pods directory /nonexistent/pods does not exist"
    );
}

#[test]
fn bad_configuration_is_a_clear_error_at_start() {
    let tree = KubeletTree::new();
    let run = |args: &[&str]| {
        let out = Command::new(agent_binary())
            .args(["run", "--standalone", "--listen", "127.0.0.1:0", "--kubelet-root"])
            .arg(&tree.root)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--mountinfo", "/nonexistent/mountinfo"]);
    assert!(err.contains("cannot open mount table /nonexistent/mountinfo: No such file or directory"), "{err}");
    let err = run(&["--mountinfo", "/proc/self/mountinfo", "--rescan-interval", "soon"]);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
    let err = run(&["--mountinfo", "/proc/self/mountinfo", "--log-level", "hotplug_watchdog=[["]);
    assert!(err.contains("bad --log-level"), "{err}");
    let out = Command::new(agent_binary()).args(["run", "--kubelet-root"]).arg(&tree.root).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --standalone"));
}
