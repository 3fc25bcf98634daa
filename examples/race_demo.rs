//! The main job: the hotplug race of kubevirt#6564 / #9708 on a real kube-apiserver and
//! real loop devices, with the real agent watching in cluster mode. Three runs:
//! 1. today's cleanup rule, a new device per attachment pod (nbd): the old pod is deleted,
//!    the VM's disk vanishes, the agent reports it (metric, Event, condition);
//! 2. the gated rule, same devices: the old pod stays while the handoff is unsafe; nothing
//!    vanishes;
//! 3. the gated rule, one shared device (kernel rbd): the handoff is safe, the old pod goes
//!    at once; nothing vanishes.
//!
//! Prints a timeline and what the agent saw; exits non-zero when an outcome differs from
//! the expected one.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::race::{play, Devices, Rule};

fn main() {
    if !support::require_root("race demo") {
        std::process::exit(1);
    }
    let mut ok = true;
    let runs = [
        (
            "1. KubeVirt v1.9.0 rule, a new device per attachment pod (nbd)",
            Rule::Today,
            Devices::PerPod,
            Duration::ZERO,
        ),
        ("2. gated rule, a new device per attachment pod (nbd)", Rule::Gated, Devices::PerPod, Duration::from_secs(5)),
        ("3. gated rule, one shared device (kernel rbd)", Rule::Gated, Devices::Shared, Duration::from_secs(20)),
    ];
    for (title, rule, devices, hold) in runs {
        println!("\n=== {title} ===");
        let o = play(rule, devices, hold, true);
        let (expected, good) = match (rule, devices) {
            (Rule::Today, _) => (
                "old pod deleted, disk1 vanished, reported",
                o.old_pod_deleted && o.vanished == Some(1.0) && o.vanished_events == 1,
            ),
            (Rule::Gated, Devices::PerPod) => {
                ("old pod kept, nothing vanished", !o.old_pod_deleted && o.vanished.is_none())
            }
            (Rule::Gated, Devices::Shared) => {
                ("old pod deleted, nothing vanished", o.old_pod_deleted && o.vanished.is_none())
            }
        };
        println!("\nexpected: {expected}: {}", if good { "yes" } else { "NO" });
        ok &= good;
    }
    println!(
        "\n{}",
        if ok { "race demo: every outcome as expected" } else { "race demo: an outcome differs from the expected one" }
    );
    std::process::exit(if ok { 0 } else { 1 });
}
