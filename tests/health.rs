//! /healthz tells the truth about the agent's loops, /readyz about its first scan, and
//! logs come as JSON when asked.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

#[test]
fn healthz_fails_when_a_loop_dies_or_stalls() {
    if !require_root("healthz_fails_when_a_loop_dies_or_stalls") {
        return;
    }
    // A FIFO where the mount table should be: the source's follow loop sees a hang-up,
    // not POLLPRI, and ends; the engine's full scan blocks opening it (no writer left):
    // a real stall, as a hung NFS read would be (the first scan read it while the writer was
    // still there; the periodic rescan is the one that blocks).
    let tree = KubeletTree::new();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mountinfo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            // Opening for write waits for the agent to open for read, at start.
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            w.write_all(b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        })
    };
    let agent =
        Agent::start_with_mountinfo(&tree.root, &fifo, &["--stall-timeout", "1s", "--rescan-interval", "500ms"]);
    writer.join().unwrap();
    agent.wait_until("healthz names the dead and the stalled loop", Duration::from_secs(10), |a| {
        let (status, body) = a.get("/healthz");
        status == 503 && body.contains("mountinfo: loop ended") && body.contains("engine: busy for")
    });
    assert!(agent.log().contains("cannot follow the mount table"), "{}", agent.log());
}

#[test]
fn healthy_agent_and_json_logs() {
    let tree = KubeletTree::new();
    let agent = Agent::start(&tree.root, &["--log-format", "json"]);
    agent.wait_ready();
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_string()));
    let log = agent.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "first full scan done; ready"), "{log}");
    let status = agent.terminate();
    assert!(status.success());
}
