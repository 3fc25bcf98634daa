//! The node-side race, played on real loop devices in a temp kubelet tree with the real
//! agent watching (`run --standalone`). No cluster: the demo itself plays the kubelet,
//! the storage driver, virt-handler and KubeVirt's controller.
//!
//! Two scenarios, each: a VM's launcher uses hotplug volume `disk1` from attachment pod
//! `hp-volume-old`; a second volume is hotplugged, so the controller creates
//! `hp-volume-new` holding both, and deletes the old pod as soon as the new one runs.
//! - shared device (kernel rbd, one LUN): the new pod exposes the same device; the swap
//!   is harmless and the agent says so before the deletion;
//! - device per pod (nbd, NVMe-oF, iSCSI): the new pod gets a new device; the agent says
//!   the old pod is not safe to delete, and after the deletion sees the launcher's device
//!   unbacked, then vanished once the storage driver tears it down.
//!
//! Exits non-zero when the agent's verdicts differ from the expected ones.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use support::*;

const LAUNCHER: &str = "virt-launcher-vm1";
const OLD: &str = "hp-volume-old";
const NEW: &str = "hp-volume-new";

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, who: &str, what: &str) {
        println!("{:>8.1} ms  {who:<18} {what}", self.start.elapsed().as_secs_f64() * 1e3);
    }
}

fn expect(agent: &Agent, t: &Timeline, what: &str, ok: bool) -> bool {
    t.say("check", &format!("{} {what}", if ok { "OK      " } else { "MISMATCH" }));
    if !ok {
        eprintln!("agent report:\n{}", agent.get("/scan").1);
    }
    ok
}

fn scenario(shared_device: bool) -> bool {
    let title =
        if shared_device { "shared device (kernel rbd)" } else { "device per attachment pod (nbd / NVMe-oF / iSCSI)" };
    println!("\n=== scenario: {title} ===");
    let t = Timeline { start: Instant::now() };
    let tree = KubeletTree::new();
    let mut old_dev = LoopDevice::add();
    let disk2_dev = LoopDevice::add();
    tree.hotplugged(LAUNCHER, OLD, "disk1", old_dev.dev());
    t.say("setup", &format!("{LAUNCHER} uses disk1 = {} from {OLD}", old_dev.dev()));

    let agent = Agent::start(&tree.root, &["--log-level", "warn"]);
    agent.wait_ready();
    agent.wait_volume(LAUNCHER, "disk1", Some("ready"));
    t.say("agent", "disk1 ready; old pod alone serves it (handoff unsafe)");

    // Hotplug disk2: the controller creates a new attachment pod holding both volumes.
    let new_dev = if shared_device { None } else { Some(LoopDevice::add()) };
    let disk1_in_new = new_dev.as_ref().map_or(old_dev.dev(), |d| d.dev());
    tree.attachment(NEW);
    tree.attach_block(NEW, "disk1", disk1_in_new);
    tree.attach_block(NEW, "disk2", disk2_dev.dev());
    t.say("controller", &format!("created {NEW}: disk1 = {disk1_in_new}, disk2 = {}", disk2_dev.dev()));
    agent.wait_volume(LAUNCHER, "disk2", Some("pending"));
    agent.wait_handoff(NEW, true);
    if shared_device {
        agent.wait_handoff(OLD, true);
    }
    let safe = handoff_safe(&agent.report(), OLD);
    let mut ok = expect(&agent, &t, &format!("agent: {OLD} handoff_safe = {safe:?}"), safe == Some(shared_device));

    // The controller deletes the old pod as soon as the new one is Running.
    tree.remove_pod(OLD);
    t.say("controller", &format!("deleted {OLD} (today's rule: the new pod is Running)"));
    tree.launcher_block(LAUNCHER, "disk2", disk2_dev.dev());
    t.say("virt-handler", "mknod disk2 into the launcher");
    agent.wait_volume(LAUNCHER, "disk2", Some("ready"));

    if shared_device {
        let state = volume_state(&agent.report(), LAUNCHER, "disk1");
        ok &= expect(&agent, &t, &format!("agent: disk1 {state:?}"), state.as_deref() == Some("ready"));
    } else {
        agent.wait_volume(LAUNCHER, "disk1", Some("unbacked"));
        t.say("agent", "disk1 UNBACKED: no attachment pod serves the launcher's device");
        old_dev.remove();
        t.say("storage driver", &format!("tore down {} with the old pod", old_dev.dev()));
        agent.wait_volume(LAUNCHER, "disk1", Some("vanished"));
        t.say("agent", "disk1 VANISHED under the running VM: this is kubevirt#6564 / #9708");
        let m = agent.metrics();
        let series = format!(
            "hotplug_watchdog_device_vanished_total{{pod_uid=\"{LAUNCHER}\",volume=\"disk1\",namespace=\"\",vmi=\"\",pod=\"\"}}"
        );
        ok &= expect(&agent, &t, &format!("metric {series} = {}", metric(&m, &series)), metric(&m, &series) == 1.0);
    }
    println!("\nfinal agent report (hotplug-watchdog scan):");
    let out = std::process::Command::new(agent_binary())
        .args(["scan", "--mountinfo", "/proc/self/mountinfo", "--kubelet-root"])
        .arg(&tree.root)
        .output()
        .expect("run scan");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ok
}

fn main() {
    if !require_root("node demo") {
        std::process::exit(1);
    }
    let ok = scenario(true) & scenario(false);
    println!(
        "\n{}",
        if ok { "demo: every verdict as expected" } else { "demo: verdicts differ from the expected ones" }
    );
    std::process::exit(if ok { 0 } else { 1 });
}
