//! Conditions on attachment pods: the signal a fixed KubeVirt controller gates on before
//! it deletes an old attachment pod. Pure: what the conditions should say, and the patch
//! that makes a pod say it, or nothing when it already does.
//!
//! Only our own condition types are ever written (`hotplug-watchdog.io/...`), through a
//! strategic merge patch of `pods/status`, which merges `status.conditions` by `type`:
//! conditions of other owners are not in the patch and stay as they are.
//! `lastTransitionTime` moves only when the status changes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::layout::PodUid;
use crate::verdict::{AttachmentVerdict, HandoffReason, Verdicts};

pub const CONDITION_PREFIX: &str = "hotplug-watchdog.io/";
/// Every volume this pod serves has its device on the node.
pub const DEVICES_PRESENT: &str = "hotplug-watchdog.io/DevicesPresent";
/// Deleting this pod now orphans no launcher device.
pub const HANDOFF_SAFE: &str = "hotplug-watchdog.io/HandoffSafe";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What the conditions of each attachment pod should say; `None` when the verdicts may not
/// speak for the cluster yet: before the first full scan of the node, and while roles are
/// not the API's (the watches have not synced): then no condition is written at all.
/// `api_pods` are the attachment pods the API confirms on this node (UID -> name); a pod
/// the API knows but the node does not show (yet) gets `Unknown`, never a guess.
pub fn desired(verdicts: &Verdicts, api_pods: &BTreeMap<PodUid, String>) -> Option<BTreeMap<PodUid, Vec<Desired>>> {
    may_speak(verdicts).then(|| api_pods.keys().map(|uid| (uid.clone(), desired_for(verdicts, uid))).collect())
}

/// Whether the verdicts may speak for the cluster (see [`desired`]).
pub fn may_speak(verdicts: &Verdicts) -> bool {
    verdicts.full_scan && verdicts.roles_from_api
}

/// What one attachment pod's conditions should say, the API confirming it. It depends on
/// the pod's own verdict and on the verdicts of its launcher's volumes (the devices named
/// in `SoleBacker`), nothing else: the writers recompute it only for pods whose verdict or
/// launcher's volumes changed.
pub fn desired_for(verdicts: &Verdicts, uid: &PodUid) -> Vec<Desired> {
    match verdicts.attachment_pods.get(uid) {
        None => {
            let message = "the pod's hotplug-disks directory is not on the node (yet)".to_string();
            let reason = HandoffReason::NotOnNode.as_str();
            vec![
                Desired { type_: DEVICES_PRESENT, status: "Unknown", reason, message: message.clone() },
                Desired { type_: HANDOFF_SAFE, status: "Unknown", reason, message },
            ]
        }
        Some(a) => vec![devices_present(a), handoff_safe(verdicts, a)],
    }
}

/// Brings `desired` (decided from `old`, for the same attachment pods) up to `new`,
/// deciding again only the pods that can differ: those whose verdict changed, and those
/// judged with a launcher whose volumes changed. Persistent maps make the comparison visit
/// only what changed, so that a removal costs the same on a node of ten volumes and of
/// thousands. Returns the pods whose conditions should now say something else. Equal to
/// [`desired`] from scratch (property-tested with the incremental judging).
pub fn redecide(old: &Verdicts, new: &Verdicts, desired: &mut BTreeMap<PodUid, Vec<Desired>>) -> Vec<PodUid> {
    use imbl::ordmap::DiffItem;
    fn key<'a, K, V>(item: &DiffItem<'a, 'a, K, V>) -> &'a K {
        match item {
            DiffItem::Add(k, _) | DiffItem::Remove(k, _) | DiffItem::Update { new: (k, _), .. } => k,
        }
    }
    let mut touched: BTreeSet<&PodUid> = old.attachment_pods.diff(&new.attachment_pods).map(|i| key(&i)).collect();
    // A `SoleBacker` message names the devices of its launcher's volumes. (The backing
    // pod's own verdict changes with such a device in every case the property test
    // reaches; this keeps the message right without relying on that.)
    for item in old.volumes.diff(&new.volumes) {
        let launcher = &key(&item).launcher;
        touched.extend(old.attachment_pods_of(launcher).chain(new.attachment_pods_of(launcher)));
    }
    let mut changed = Vec::new();
    for uid in touched {
        let Some(want) = desired.get_mut(uid) else { continue };
        let now = desired_for(new, uid);
        if *want != now {
            *want = now;
            changed.push(uid.clone());
        }
    }
    changed
}

fn devices_present(a: &AttachmentVerdict) -> Desired {
    let missing: Vec<String> =
        a.devices.iter().filter(|(_, (_, ok))| !ok).map(|(v, (d, _))| format!("{v} ({d})")).collect();
    let present: Vec<String> =
        a.devices.iter().filter(|(_, (_, ok))| *ok).map(|(v, (d, _))| format!("{v} ({d})")).collect();
    if a.handoff == HandoffReason::DirectoryUnreadable {
        let message = "the pod's hotplug-disks directory could not be read".to_string();
        return Desired { type_: DEVICES_PRESENT, status: "Unknown", reason: "DirectoryUnreadable", message };
    }
    if missing.is_empty() {
        let message = if present.is_empty() {
            "the pod serves no device yet".to_string()
        } else {
            format!("present: {}", present.join(", "))
        };
        Desired { type_: DEVICES_PRESENT, status: "True", reason: "DevicesPresent", message }
    } else {
        Desired {
            type_: DEVICES_PRESENT,
            status: "False",
            reason: "DeviceMissing",
            message: format!("missing: {}", missing.join(", ")),
        }
    }
}

fn handoff_safe(verdicts: &Verdicts, a: &AttachmentVerdict) -> Desired {
    use HandoffReason::*;
    let message = match a.handoff {
        DevicesServedElsewhere => {
            "every launcher device this pod serves is also served by an attachment pod that stays".to_string()
        }
        NoDeviceInUse => "the VM uses none of this pod's devices".to_string(),
        VmiFinal => "the VMI has finished: nothing of it is left to protect".to_string(),
        LauncherGone => "the launcher pod has ended or is going: nothing of it is left to protect".to_string(),
        TriggerPod => "a WaitForFirstConsumer trigger pod: no VM uses it".to_string(),
        SoleBacker => format!(
            "only this pod serves the VM's {}: deleting it would tear the disk down",
            a.orphans(verdicts).join(", ")
        ),
        DirectoryUnreadable => {
            "the pod's hotplug-disks directory could not be read whole (a read error, or too many entries): what it serves is not known".into()
        }
        LauncherUnreadable => {
            "the launcher's hotplug-disks directory could not be read whole (a read error, or too many entries): what the VM uses is not known".into()
        }
        LauncherNotConfirmed => {
            "the API does not show this pod's launcher on the node (yet): what it serves is not known".into()
        }
        FilesystemVolumePending => {
            "a filesystem volume of the VM is not mounted yet: which pod will back it is not known".into()
        }
        MountTableMismatch => {
            "the agent's mount table does not show the kubelet directory it reads: filesystem volumes cannot be seen"
                .into()
        }
        NotOnNode => "the pod's hotplug-disks directory is not on the node (yet)".into(),
    };
    Desired { type_: HANDOFF_SAFE, status: a.handoff.status().as_str(), reason: a.handoff.as_str(), message }
}

/// The strategic merge patch for `pods/status` that makes a pod whose conditions are
/// `current` carry `desired`, or `None` when it already does.
pub fn patch(current: &[PodCondition], desired: &[Desired], now: &Time) -> Option<serde_json::Value> {
    let changed: Vec<serde_json::Value> = desired
        .iter()
        .filter_map(|d| {
            let old = current.iter().find(|c| c.type_ == d.type_);
            let same = old.is_some_and(|c| {
                c.status == d.status
                    && c.reason.as_deref() == Some(d.reason)
                    && c.message.as_deref() == Some(&d.message)
            });
            if same {
                return None;
            }
            let transition = match old {
                Some(c) if c.status == d.status => c.last_transition_time.clone().unwrap_or_else(|| now.clone()),
                _ => now.clone(),
            };
            Some(json!({
                "type": d.type_,
                "status": d.status,
                "reason": d.reason,
                "message": d.message,
                "lastTransitionTime": transition,
            }))
        })
        .collect();
    (!changed.is_empty()).then(|| json!({ "status": { "conditions": changed } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevNum;
    use crate::inventory::{ApiAttachment, ApiLauncher, ClusterFacts, FullScan, Inventory, Observation};
    use crate::layout::{LauncherEntry, PodDisks};
    use crate::verdict::judge;
    use std::collections::BTreeSet;

    fn verdicts(new_dev: u32, present: &[u32]) -> Verdicts {
        let mut inv = Inventory::default();
        let d = |m| DevNum::new(7, m);
        inv.apply(Observation::FullScan(FullScan {
            seq: 1,
            pods: BTreeMap::from([
                ("L".into(), PodDisks::Launcher(BTreeMap::from([("disk1".into(), LauncherEntry::Block(d(1)))]))),
                ("old".into(), PodDisks::Attachment(BTreeMap::from([("disk1".into(), d(1))]))),
                ("new".into(), PodDisks::Attachment(BTreeMap::from([("disk1".into(), d(new_dev))]))),
            ]),
            devices: present.iter().map(|m| d(*m)).collect::<BTreeSet<_>>(),
            mounts: BTreeMap::new(),
            ..Default::default()
        }));
        let attachment = |created| ApiAttachment { launcher: "L".into(), created, trigger: false };
        inv.apply(Observation::Cluster(ClusterFacts {
            launchers: BTreeMap::from([("L".into(), ApiLauncher::default())]),
            attachment_pods: BTreeMap::from([("old".into(), attachment(100)), ("new".into(), attachment(200))]),
        }));
        judge(&inv)
    }

    fn api_pods() -> BTreeMap<PodUid, String> {
        ["old", "new", "elsewhere"].map(|p| (PodUid::from(p), format!("hp-volume-{p}"))).into_iter().collect()
    }

    fn status_of<'a>(d: &'a BTreeMap<PodUid, Vec<Desired>>, pod: &str, t: &str) -> &'a Desired {
        d[pod].iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn nothing_is_written_before_a_full_scan_and_api_roles() {
        let mut v = verdicts(1, &[1]);
        assert!(desired(&v, &api_pods()).is_some());
        v.roles_from_api = false;
        assert_eq!(desired(&v, &api_pods()), None, "roles inferred from directories never become conditions");
        v.roles_from_api = true;
        v.full_scan = false;
        assert_eq!(desired(&v, &api_pods()), None, "no condition before the first full scan");
    }

    #[test]
    fn conditions_follow_the_verdicts() {
        let same = desired(&verdicts(1, &[1]), &api_pods()).unwrap();
        assert_eq!(status_of(&same, "old", HANDOFF_SAFE).status, "True");
        assert_eq!(status_of(&same, "old", DEVICES_PRESENT).status, "True");
        assert_eq!(status_of(&same, "old", DEVICES_PRESENT).message, "present: disk1 (7:1)");

        let fresh = desired(&verdicts(2, &[1, 2]), &api_pods()).unwrap();
        let h = status_of(&fresh, "old", HANDOFF_SAFE);
        assert_eq!((h.status, h.reason), ("False", "SoleBacker"));
        assert!(h.message.contains("disk1 (7:1)"), "{}", h.message);
        assert_eq!(status_of(&fresh, "new", HANDOFF_SAFE).status, "True");

        let lost = desired(&verdicts(2, &[2]), &api_pods()).unwrap();
        let p = status_of(&lost, "old", DEVICES_PRESENT);
        assert_eq!((p.status, p.message.as_str()), ("False", "missing: disk1 (7:1)"));

        assert_eq!(status_of(&lost, "elsewhere", HANDOFF_SAFE).status, "Unknown", "not on the node: no guess");
        assert!(!lost.contains_key("L"), "only attachment pods the API knows");
    }

    fn pod_with(conditions: serde_json::Value) -> Vec<PodCondition> {
        serde_json::from_value(conditions).unwrap()
    }

    #[test]
    fn patch_touches_only_what_changed_and_keeps_transition_times() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap());
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(2_000_000).unwrap());
        let want = vec![
            Desired { type_: DEVICES_PRESENT, status: "True", reason: "DevicesPresent", message: "present: a".into() },
            Desired { type_: HANDOFF_SAFE, status: "False", reason: "SoleBacker", message: "m2".into() },
        ];
        // Nothing there: both written, at `now`; the kubelet's Ready is never in the patch.
        let pod = pod_with(json!([{"type": "Ready", "status": "False"}]));
        let p = patch(&pod, &want, &now).unwrap();
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert!(conds.iter().all(|c| c["type"].as_str().unwrap().starts_with(CONDITION_PREFIX)));
        assert_eq!(conds[0]["lastTransitionTime"], json!(now));

        // Already so: no write at all.
        let pod = pod_with(json!([
            {"type": DEVICES_PRESENT, "status": "True", "reason": "DevicesPresent", "message": "present: a", "lastTransitionTime": t0},
            {"type": HANDOFF_SAFE, "status": "False", "reason": "SoleBacker", "message": "m2", "lastTransitionTime": t0},
        ]));
        assert_eq!(patch(&pod, &want, &now), None);

        // Only the message changed: written, transition time kept.
        let mut want2 = want.clone();
        want2[1].message = "m3".into();
        let p = patch(&pod, &want2, &now).unwrap();
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["lastTransitionTime"], json!(t0));

        // The status flipped: the transition time moves.
        want2[1].status = "True";
        let p = patch(&pod, &want2, &now).unwrap();
        assert_eq!(p["status"]["conditions"][0]["lastTransitionTime"], json!(now));
    }
}
