//! The race reproduced end to end (the README's main job runs the same scenarios with a
//! timeline): KubeVirt v1.9.0's cleanup rule tears down the device a VM uses and the agent
//! reports it; the same unmodified rule with the API server's handoff hold installed is
//! refused and the disk survives; with the gate the old attachment pod stays until the
//! handoff is safe.

mod support;

use std::time::Duration;

use support::race::{play, Devices, Rule};
use support::*;

#[test]
fn todays_rule_loses_the_disk_and_the_agent_says_so() {
    if !require_root("todays_rule_loses_the_disk_and_the_agent_says_so") {
        return;
    }
    let o = play(Rule::Today, Devices::PerPod, Duration::from_secs(20), false);
    assert!(o.old_pod_deleted);
    assert_eq!(o.refusals().len(), 0, "nothing refuses the controller without the policy");
    assert_eq!(o.disk1_state.as_deref(), Some("vanished"));
    assert_eq!(o.vanished, Some(1.0));
    assert_eq!(o.vanished_events, 1);
}

#[test]
fn todays_rule_with_the_hold_keeps_the_disk() {
    if !require_root("todays_rule_with_the_hold_keeps_the_disk") {
        return;
    }
    let o = play(Rule::TodayWithHold, Devices::PerPod, Duration::from_secs(5), false);
    assert!(!o.old_pod_deleted, "the API server must refuse v1.9.0's DELETE: {:#?}", o.controller);
    let refusals = o.refusals();
    assert!(refusals.len() >= 2, "v1.9.0 retries a refused DELETE: {:#?}", o.controller);
    for r in &refusals {
        let message = r.refused.as_deref().unwrap();
        assert!(message.contains("SoleBacker") && message.contains("disk1"), "{message}");
    }
    assert!(o.failed_delete_events() >= 1);
    // v1.9.0 does not put a sync error of a Running VMI in its Synchronized condition
    // (docs/conformance.md): the refusal shows in the controller's log and the API server's
    // counters, not on the VMI.
    assert_eq!(o.synchronized, None);
    assert_eq!(o.disk1_state.as_deref(), Some("ready"));
    assert_eq!((o.vanished, o.vanished_events), (None, 0));
}

#[test]
fn todays_rule_with_the_hold_lets_a_safe_handoff_through() {
    if !require_root("todays_rule_with_the_hold_lets_a_safe_handoff_through") {
        return;
    }
    let o = play(Rule::TodayWithHold, Devices::Shared, Duration::from_secs(20), false);
    assert!(o.old_pod_deleted, "shared device: HandoffSafe turns True and the retry goes through: {:#?}", o.controller);
    for r in o.refusals() {
        let message = r.refused.as_deref().unwrap();
        assert!(message.contains("SoleBacker"), "refused only while the agent still said False: {message}");
    }
    assert_eq!(o.disk1_state.as_deref(), Some("ready"));
    assert_eq!((o.vanished, o.vanished_events), (None, 0));
}

#[test]
fn the_gate_keeps_the_old_pod_while_the_handoff_is_unsafe() {
    if !require_root("the_gate_keeps_the_old_pod_while_the_handoff_is_unsafe") {
        return;
    }
    let o = play(Rule::Gated, Devices::PerPod, Duration::from_secs(3), false);
    assert!(!o.old_pod_deleted);
    assert!(!o.controller.gate.is_empty(), "the gate was asked");
    assert!(
        o.controller
            .gate
            .iter()
            .all(|(pod, d, _)| pod == "hp-volume-aaaaa" && !d.allowed && d.reason == "HandoffUnsafe"),
        "{:#?}",
        o.controller.gate
    );
    assert_eq!(o.controller.attempts.len(), 0, "a gated controller sends no DELETE it would regret");
    assert_eq!(o.disk1_state.as_deref(), Some("ready"));
    assert_eq!((o.vanished, o.vanished_events), (None, 0));
}

#[test]
fn the_gate_lets_a_safe_handoff_through() {
    if !require_root("the_gate_lets_a_safe_handoff_through") {
        return;
    }
    let o = play(Rule::Gated, Devices::Shared, Duration::from_secs(20), false);
    assert!(o.old_pod_deleted, "shared device: HandoffSafe turns True");
    let last = o.controller.gate.last().expect("the gate was asked");
    assert!(last.1.allowed && last.1.reason == "HandoffSafe", "{last:?}");
    assert_eq!(o.disk1_state.as_deref(), Some("ready"));
    assert_eq!((o.vanished, o.vanished_events), (None, 0));
}
