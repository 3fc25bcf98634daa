//! The race reproduced end to end (the README's main job runs the same scenarios with a
//! timeline): today's cleanup rule tears down the device a VM uses and the agent reports
//! it; with the gate the old attachment pod stays until the handoff is safe.

mod support;

use std::time::Duration;

use support::race::{play, Devices, Rule};
use support::*;

#[test]
fn todays_rule_loses_the_disk_and_the_agent_says_so() {
    if !require_root("todays_rule_loses_the_disk_and_the_agent_says_so") {
        return;
    }
    let o = play(Rule::Today, Devices::PerPod, Duration::ZERO, false);
    assert!(o.old_pod_deleted);
    assert_eq!(o.disk1_state.as_deref(), Some("vanished"));
    assert_eq!(o.vanished, Some(1.0));
    assert_eq!(o.vanished_events, 1);
}

#[test]
fn the_gate_keeps_the_old_pod_while_the_handoff_is_unsafe() {
    if !require_root("the_gate_keeps_the_old_pod_while_the_handoff_is_unsafe") {
        return;
    }
    let o = play(Rule::Gated, Devices::PerPod, Duration::from_secs(3), false);
    assert!(!o.old_pod_deleted);
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
    assert_eq!(o.disk1_state.as_deref(), Some("ready"));
    assert_eq!((o.vanished, o.vanished_events), (None, 0));
}
