//! The systemd unit passes `systemd-analyze verify`, and its environment file names only
//! variables the binary reads.

use std::process::Command;

#[test]
fn the_unit_verifies() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hotplug-watchdog.service")).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/hotplug-watchdog", env!("CARGO_BIN_EXE_hotplug-watchdog"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hotplug-watchdog.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine are not ours to judge.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("hotplug-watchdog")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_environment_file_uses_real_variables() {
    let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hotplug-watchdog.env")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_hotplug-watchdog")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let vars: Vec<&str> = env
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(vars.len() >= 5, "{vars:?}");
    for v in vars {
        assert!(help.contains(&format!("env: {v}=")), "{v} is not a variable of `hotplug-watchdog run`:\n{help}");
    }
}

/// The unit is as tight as the DaemonSet: not root, one capability (CAP_SYSLOG, for the
/// kernel log), bounded memory and tasks; `systemd-analyze security` rates it (the figure
/// is in docs/install.md).
#[test]
fn the_unit_runs_unprivileged_and_bounded() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hotplug-watchdog.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit.lines().filter_map(|l| l.split_once('=')).collect();
    let value = |key: &str| settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>();
    assert_eq!(value("User"), ["hotplug-watchdog"]);
    assert_eq!(value("CapabilityBoundingSet"), ["CAP_SYSLOG"]);
    assert_eq!(value("AmbientCapabilities"), ["CAP_SYSLOG"]);
    assert_eq!(value("MemoryMax"), ["128M"]);
    assert_eq!(value("TasksMax"), ["64"]);
    assert_eq!(value("NoNewPrivileges"), ["yes"]);
    let sysusers =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hotplug-watchdog.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u hotplug-watchdog ")), "{sysusers}");

    let unit = unit.replace("/usr/local/bin/hotplug-watchdog", env!("CARGO_BIN_EXE_hotplug-watchdog"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hotplug-watchdog.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for hotplug-watchdog.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} (was 2.9 for the root unit):\n{text}");
}
