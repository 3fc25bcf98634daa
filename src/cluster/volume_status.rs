//! The VMI's `status.volumeStatus`: where the agent's truth disagrees with what KubeVirt
//! believes (a volume `Ready` whose device vanished or lost its backing), it says so in
//! that entry's `reason` and `message`, and takes its words back once the device is fine.
//! Pure: the JSON patch, or nothing.
//!
//! Rules that keep a running VM safe and KubeVirt's own writers whole (see the project's
//! kubevirt-hotplug facts, section 5):
//! - never `phase`: any phase but `MountedToPod`/`Ready` hot-unplugs the disk;
//! - never add, remove or reorder entries (`volumeStatus` is an atomic list);
//! - every write is guarded by `test` operations on the entry's `name` and `phase` at that
//!   index, so a list that changed since it was read makes the whole patch fail, not land
//!   on the wrong entry;
//! - only reasons the agent wrote are ever cleared.

use serde_json::{json, Value};

use crate::layout::PodUid;
use crate::verdict::{Verdicts, VolumeKey, VolumeState};

/// The reasons the agent writes; the only ones it ever removes.
pub const OUR_REASONS: [&str; 3] = ["HotplugDeviceVanished", "HotplugDeviceUnbacked", "HotplugDeviceReplaced"];

/// Phases in which KubeVirt believes the disk is in the VM.
const BELIEVED_IN_VM: [&str; 2] = ["Ready", "MountedToPod"];

/// What one entry should say, if the agent has anything to say.
fn ours(launcher: &PodUid, name: &str, verdicts: &Verdicts) -> Option<(&'static str, String)> {
    let key = VolumeKey { launcher: launcher.clone(), volume: name.to_string() };
    let v = verdicts.volumes.get(&key).filter(|v| v.is_alarm())?;
    let device = v.device.map_or("-".to_string(), |d| d.to_string());
    Some(match v.state {
        VolumeState::Vanished => (OUR_REASONS[0], format!("hotplug-watchdog: device {device} is gone from the node")),
        VolumeState::Replaced => {
            (OUR_REASONS[2], format!("hotplug-watchdog: device number {device} now belongs to a different disk"))
        }
        _ => (OUR_REASONS[1], format!("hotplug-watchdog: no attachment pod on the node serves device {device}")),
    })
}

/// One entry of a VMI's `status.volumeStatus`, the fields the agent reads; a field that is
/// missing or not a string is `None`. Entries are kept in order: patches address them by
/// index.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct VolumeStatusEntry {
    #[serde(default, deserialize_with = "super::objects::lenient_text")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::objects::lenient_text")]
    pub phase: Option<String>,
    #[serde(default, deserialize_with = "super::objects::lenient_text")]
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "super::objects::lenient_text")]
    pub message: Option<String>,
}

/// The entries of a VMI's `status.volumeStatus`, the VMI as the API returns it; `None`
/// when it has none.
pub fn entries(vmi: &Value) -> Option<Vec<VolumeStatusEntry>> {
    serde_json::from_value(vmi.pointer("/status/volumeStatus")?.clone()).ok()
}

/// The JSON patch that brings the VMI's volumeStatus in line, or `None` when it is.
/// `expect` lists, per changed entry, the reason it must carry afterwards (`None`: none of
/// ours), so that a write that "succeeded" but was put back can be told.
pub fn patch(
    entries: &[VolumeStatusEntry],
    launcher: &PodUid,
    verdicts: &Verdicts,
) -> Option<(Vec<Value>, Vec<Expectation>)> {
    let mut ops = Vec::new();
    let mut expect = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (Some(name), Some(phase)) = (entry.name.as_deref(), entry.phase.as_deref()) else { continue };
        let (reason, message) = (entry.reason.as_deref(), entry.message.as_deref());
        let base = format!("/status/volumeStatus/{i}");
        let guard = [
            json!({"op": "test", "path": format!("{base}/name"), "value": name}),
            json!({"op": "test", "path": format!("{base}/phase"), "value": phase}),
        ];
        let want = ours(launcher, name, verdicts).filter(|_| BELIEVED_IN_VM.contains(&phase));
        match want {
            Some((r, m)) if reason != Some(r) || message != Some(m.as_str()) => {
                ops.extend(guard);
                ops.push(json!({"op": "add", "path": format!("{base}/reason"), "value": r}));
                ops.push(json!({"op": "add", "path": format!("{base}/message"), "value": m}));
                expect.push(Expectation { index: i, name: name.to_string(), reason: Some(r) });
            }
            None if reason.is_some_and(|r| OUR_REASONS.contains(&r)) => {
                ops.extend(guard);
                ops.push(json!({"op": "test", "path": format!("{base}/reason"), "value": reason}));
                ops.push(json!({"op": "remove", "path": format!("{base}/reason")}));
                if message.is_some() {
                    ops.push(json!({"op": "remove", "path": format!("{base}/message")}));
                }
                expect.push(Expectation { index: i, name: name.to_string(), reason: None });
            }
            _ => {}
        }
    }
    (!ops.is_empty()).then_some((ops, expect))
}

/// What an entry must look like after a write that was not put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub index: usize,
    pub name: String,
    /// `Some`: our reason; `None`: none of ours.
    pub reason: Option<&'static str>,
}

/// Whether the object the API server returned carries what was written.
pub fn landed(stored: &Value, expect: &[Expectation]) -> bool {
    expect.iter().all(|e| {
        let entry = stored.pointer(&format!("/status/volumeStatus/{}", e.index));
        let reason = entry.and_then(|x| x.get("reason")).and_then(Value::as_str);
        entry.and_then(|x| x["name"].as_str()) == Some(e.name.as_str())
            && match e.reason {
                Some(r) => reason == Some(r),
                None => !reason.is_some_and(|r| OUR_REASONS.contains(&r)),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevNum;
    use crate::inventory::{FullScan, Inventory, Observation};
    use crate::layout::{LauncherEntry, PodDisks};
    use crate::verdict::judge;
    use std::collections::BTreeMap;

    fn verdicts(device_present: bool) -> Verdicts {
        let mut inv = Inventory::default();
        let d = DevNum::new(7, 1);
        inv.apply(Observation::FullScan(FullScan {
            seq: 1,
            pods: BTreeMap::from([
                ("L".into(), PodDisks::Launcher(BTreeMap::from([("disk1".into(), LauncherEntry::Block(d))]))),
                ("A".into(), PodDisks::Attachment(BTreeMap::from([("disk1".into(), d)]))),
            ]),
            devices: if device_present { [d].into() } else { Default::default() },
            mounts: BTreeMap::new(),
            ..Default::default()
        }));
        judge(&inv)
    }

    fn vmi(disk1: Value) -> Value {
        json!({"status": {"volumeStatus": [
            {"name": "rootdisk", "phase": "Ready", "target": "vda"},
            disk1,
        ]}})
    }

    /// The patch for a VMI as the API returns it.
    fn patch(vmi: &Value, launcher: &PodUid, verdicts: &Verdicts) -> Option<(Vec<Value>, Vec<Expectation>)> {
        super::patch(&entries(vmi)?, launcher, verdicts)
    }

    fn apply(doc: &Value, ops: &[Value]) -> Result<Value, String> {
        let mut doc = doc.clone();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
        Ok(doc)
    }

    #[test]
    fn says_so_in_reason_and_message_and_never_touches_phase() {
        let before = vmi(
            json!({"name": "disk1", "phase": "Ready", "reason": "VolumeReady", "message": "ok", "target": "sda", "hotplugVolume": {"attachPodName": "hp"}}),
        );
        let (ops, expect) = patch(&before, &"L".into(), &verdicts(false)).unwrap();
        assert!(ops.iter().all(|op| !op["path"].as_str().unwrap().ends_with("/phase") || op["op"] == "test"));
        let after = apply(&before, &ops).unwrap();
        assert_eq!(after["status"]["volumeStatus"][1]["reason"], "HotplugDeviceVanished");
        assert!(landed(&after, &expect));
        assert!(!landed(&before, &expect), "a write put back is told");
        // Everything else byte for byte.
        let mut scrub = after.clone();
        scrub["status"]["volumeStatus"][1]["reason"] = before["status"]["volumeStatus"][1]["reason"].clone();
        scrub["status"]["volumeStatus"][1]["message"] = before["status"]["volumeStatus"][1]["message"].clone();
        assert_eq!(scrub, before);
        // Done already: nothing to write.
        assert_eq!(patch(&after, &"L".into(), &verdicts(false)), None);

        // The device is back: our words are taken back, nothing else.
        let (ops, expect) = patch(&after, &"L".into(), &verdicts(true)).unwrap();
        let cleared = apply(&after, &ops).unwrap();
        assert!(landed(&cleared, &expect));
        assert_eq!(cleared["status"]["volumeStatus"][1].get("reason"), None);
        assert_eq!(cleared["status"]["volumeStatus"][1]["phase"], "Ready");
        assert_eq!(patch(&cleared, &"L".into(), &verdicts(true)), None);
    }

    #[test]
    fn a_list_that_changed_makes_the_patch_fail_not_land_elsewhere() {
        let before = vmi(json!({"name": "disk1", "phase": "Ready"}));
        let (ops, _) = patch(&before, &"L".into(), &verdicts(false)).unwrap();
        // Meanwhile the controller reordered the list, or virt-handler moved the phase.
        let reordered = json!({"status": {"volumeStatus": [{"name": "disk1", "phase": "Ready"}, {"name": "rootdisk", "phase": "Ready"}]}});
        assert!(apply(&reordered, &ops).is_err());
        let detaching = vmi(json!({"name": "disk1", "phase": "Detaching"}));
        assert!(apply(&detaching, &ops).is_err());
    }

    #[test]
    fn leaves_phases_kubevirt_does_not_believe_in_and_reasons_of_others() {
        let pending = vmi(json!({"name": "disk1", "phase": "Pending"}));
        assert_eq!(patch(&pending, &"L".into(), &verdicts(false)), None);
        let theirs = vmi(json!({"name": "disk1", "phase": "Ready", "reason": "VolumeReady"}));
        assert_eq!(patch(&theirs, &"L".into(), &verdicts(true)), None);
        assert_eq!(patch(&json!({"status": {}}), &"L".into(), &verdicts(false)), None, "no volumeStatus: nothing");
    }
}
