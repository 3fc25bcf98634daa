//! The main job: the hotplug race of kubevirt#6564 / #9708 on a real kube-apiserver and
//! real loop devices, with the real agent watching in cluster mode. KubeVirt's controller is
//! an imitation of v1.9.0's attachment-pod cleanup that deletes as KubeVirt does (its
//! ServiceAccount, by name, grace period 0; on refusal a FailedDelete Event and a requeue
//! with backoff). Five runs:
//! 1. KubeVirt v1.9.0's rule, a new device per attachment pod (nbd): the old pod is
//!    deleted, the VM's disk vanishes, the agent reports it (metric, Event, condition);
//! 2. the same rule, unmodified, with the API server's handoff hold installed
//!    (deploy/handoff-hold-policy.yaml): the DELETE is refused, retried with backoff and
//!    refused again; the old pod stays and nothing vanishes;
//! 3. the same with one shared device (kernel rbd): the agent says the handoff is safe and
//!    the controller's next retry goes through; nothing vanishes;
//! 4. the gated rule (contrib/kubevirt's gate, through gate-decide), a new device per pod:
//!    the old pod stays while the handoff is unsafe; nothing vanishes;
//! 5. the gated rule, one shared device: the old pod goes at once; nothing vanishes.
//!
//! Prints a timeline and what the agent saw; exits non-zero when an outcome differs from
//! the expected one.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::race::{play, Devices, Outcome, Rule};

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
            Duration::from_secs(20),
        ),
        (
            "2. KubeVirt v1.9.0 rule, unmodified, with the API server's handoff hold; a new device per pod (nbd)",
            Rule::TodayWithHold,
            Devices::PerPod,
            Duration::from_secs(5),
        ),
        (
            "3. KubeVirt v1.9.0 rule, unmodified, with the API server's handoff hold; one shared device (kernel rbd)",
            Rule::TodayWithHold,
            Devices::Shared,
            Duration::from_secs(20),
        ),
        ("4. gated rule, a new device per attachment pod (nbd)", Rule::Gated, Devices::PerPod, Duration::from_secs(5)),
        ("5. gated rule, one shared device (kernel rbd)", Rule::Gated, Devices::Shared, Duration::from_secs(20)),
    ];
    for (title, rule, devices, hold) in runs {
        println!("\n=== {title} ===");
        let o = play(rule, devices, hold, true);
        let (expected, good) = expectation(rule, devices, &o);
        println!("\nexpected: {expected}: {}", if good { "yes" } else { "NO" });
        ok &= good;
    }
    println!(
        "\n{}",
        if ok { "race demo: every outcome as expected" } else { "race demo: an outcome differs from the expected one" }
    );
    std::process::exit(if ok { 0 } else { 1 });
}

fn expectation(rule: Rule, devices: Devices, o: &Outcome) -> (&'static str, bool) {
    let nothing_vanished = o.vanished.is_none() && o.vanished_events == 0;
    match (rule, devices) {
        (Rule::Today, _) => (
            "old pod deleted, disk1 vanished, reported",
            o.old_pod_deleted && o.vanished == Some(1.0) && o.vanished_events == 1,
        ),
        (Rule::TodayWithHold, Devices::PerPod) => (
            "v1.9.0's DELETE refused and retried, old pod kept, nothing vanished",
            !o.old_pod_deleted && o.refusals().len() >= 2 && nothing_vanished,
        ),
        (Rule::TodayWithHold, Devices::Shared) => (
            "released once the agent says the handoff is safe: old pod deleted, nothing vanished",
            o.old_pod_deleted && nothing_vanished,
        ),
        (Rule::Gated, Devices::PerPod) => ("old pod kept, nothing vanished", !o.old_pod_deleted && nothing_vanished),
        (Rule::Gated, Devices::Shared) => ("old pod deleted, nothing vanished", o.old_pod_deleted && nothing_vanished),
    }
}
