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
