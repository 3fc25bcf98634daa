//! Which changes deserve a person's attention (a Kubernetes Event in cluster mode, a
//! warning in the log): decided here, purely, from the transitions and the new verdicts.
//! Only transitions qualify, so a steady state or a rescan that finds nothing new says
//! nothing.

use std::collections::BTreeSet;

use crate::model::PodUid;
use crate::verdict::{AttachmentVerdict, HandoffReason, Transitions, Verdicts, VolumeState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// A device vanished under a running VM (not an unplug).
    DeviceVanished,
    /// A device lost the last attachment pod serving it.
    DeviceUnbacked,
    /// A device number now belongs to another disk.
    DeviceReplaced,
    /// A volume became ready, or recovered.
    DeviceReady,
    /// An attachment pod that a newer one is meant to replace is the only one serving a
    /// device the VM uses: deleting it now would tear the disk down.
    HandoffUnsafe,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 5] = [
        NoticeKind::DeviceVanished,
        NoticeKind::DeviceUnbacked,
        NoticeKind::DeviceReplaced,
        NoticeKind::DeviceReady,
        NoticeKind::HandoffUnsafe,
    ];

    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            NoticeKind::DeviceVanished => "HotplugDeviceVanished",
            NoticeKind::DeviceUnbacked => "HotplugDeviceUnbacked",
            NoticeKind::DeviceReplaced => "HotplugDeviceReplaced",
            NoticeKind::DeviceReady => "HotplugDeviceReady",
            NoticeKind::HandoffUnsafe => "HotplugHandoffUnsafe",
        }
    }

    pub fn is_warning(self) -> bool {
        self != NoticeKind::DeviceReady
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// The launcher pod whose VMI the notice is about.
    pub launcher: PodUid,
    pub message: String,
}

/// Superseded attachment pods that are not safe to delete: the controller means to delete
/// them (a swap is under way) but each is the only one serving a device the VM uses. A lone
/// pod serving its volumes is normal.
pub fn unsafe_handoffs(v: &Verdicts) -> BTreeSet<PodUid> {
    v.attachment_pods.iter().filter(|(_, a)| handoff_unsafe(a)).map(|(pod, _)| pod.clone()).collect()
}

fn handoff_unsafe(a: &AttachmentVerdict) -> bool {
    a.superseded && a.handoff == HandoffReason::SoleBacker
}

/// `pod_name` says a pod the way a person knows it (its name in cluster mode, else its UID).
pub fn notices(
    old: &Verdicts,
    new: &Verdicts,
    changes: &Transitions,
    pod_name: impl Fn(&PodUid) -> String,
) -> Vec<Notice> {
    let mut out = Vec::new();
    for t in &changes.volumes {
        let Some(v) = new.volumes.get(&t.key) else { continue };
        let device = v.device.map_or("-".to_string(), |d| d.to_string());
        let (k, name) = (&t.key, &t.key.volume);
        let kind = match (t.from, t.to) {
            (_, Some(VolumeState::Vanished)) if v.is_alarm() => NoticeKind::DeviceVanished,
            (_, Some(VolumeState::Unbacked)) if v.is_alarm() => NoticeKind::DeviceUnbacked,
            (_, Some(VolumeState::Replaced)) if v.is_alarm() => NoticeKind::DeviceReplaced,
            (Some(_), Some(VolumeState::Ready)) => NoticeKind::DeviceReady,
            _ => continue,
        };
        let message = match kind {
            NoticeKind::DeviceVanished => format!(
                "hotplug volume {name}: device {device} is gone from the node while the VM's launcher still uses it"
            ),
            NoticeKind::DeviceUnbacked => {
                format!("hotplug volume {name}: no attachment pod on the node serves device {device} any more")
            }
            NoticeKind::DeviceReplaced => format!(
                "hotplug volume {name}: device number {device} now belongs to a different disk than the one the VM had; the VM's node reaches the wrong disk"
            ),
            _ => format!(
                "hotplug volume {name}: device {device} present, served by attachment pod(s) {}",
                v.backing_pods.iter().map(&pod_name).collect::<Vec<_>>().join(", ")
            ),
        };
        out.push(Notice { kind, launcher: k.launcher.clone(), message });
    }
    // Only pods whose verdict changed can have become unsafe.
    let is_unsafe = |v: &Verdicts, pod: &PodUid| v.attachment_pods.get(pod).is_some_and(|a| handoff_unsafe(a));
    for pod in changes.attachment_pods.iter().filter(|p| is_unsafe(new, p) && !is_unsafe(old, p)) {
        let a = &new.attachment_pods[pod];
        let orphans = a.orphans(new);
        out.push(Notice {
            kind: NoticeKind::HandoffUnsafe,
            launcher: a.launcher.clone().expect("an unsafe handoff has a launcher"),
            message: format!(
                "attachment pod {name} is the only one serving {}; a newer attachment pod does not serve the same device, so deleting {name} now would tear the disk down",
                orphans.join(", "),
                name = pod_name(pod),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevNum;
    use crate::inventory::{FullScan, Inventory, Observation};
    use crate::layout::{LauncherEntry, PodDisks};
    use crate::verdict::{judge, transitions};
    use std::collections::BTreeMap;

    fn verdicts(pods: &[(&str, PodDisks)], devices: &[DevNum]) -> Verdicts {
        let mut inv = Inventory::default();
        inv.apply(Observation::FullScan(FullScan {
            seq: 1,
            pods: pods.iter().map(|(u, d)| (PodUid::from(*u), d.clone())).collect(),
            devices: devices.iter().copied().collect(),
            mounts: BTreeMap::new(),
            ..Default::default()
        }));
        judge(&inv)
    }

    fn launcher(dev: DevNum) -> (&'static str, PodDisks) {
        ("L", PodDisks::Launcher(BTreeMap::from([("disk1".to_string(), LauncherEntry::Block(dev))])))
    }

    fn attach(uid: &'static str, dev: DevNum) -> (&'static str, PodDisks) {
        (uid, PodDisks::Attachment(BTreeMap::from([("disk1".to_string(), dev)])))
    }

    fn kinds(old: &Verdicts, new: &Verdicts) -> Vec<NoticeKind> {
        notices(old, new, &transitions(old, new), |u| u.to_string()).into_iter().map(|n| n.kind).collect()
    }

    #[test]
    fn swap_to_a_new_device_warns_once_then_the_loss() {
        let (d1, d2) = (DevNum::new(7, 1), DevNum::new(7, 2));
        let steady = verdicts(&[launcher(d1), attach("old", d1)], &[d1, d2]);
        assert!(unsafe_handoffs(&steady).is_empty(), "a lone attachment pod is normal");
        let swap = verdicts(&[launcher(d1), attach("old", d1), attach("new", d2)], &[d1, d2]);
        assert_eq!(kinds(&steady, &swap), vec![NoticeKind::HandoffUnsafe]);
        let n = &notices(&steady, &swap, &transitions(&steady, &swap), |uid| format!("name-of-{uid}"))[0];
        assert!(n.message.contains("name-of-old") && n.message.contains("disk1 (7:1)"), "{}", n.message);
        assert_eq!(kinds(&swap, &swap), vec![], "nothing new, nothing said");

        let deleted = verdicts(&[launcher(d1), attach("new", d2)], &[d1, d2]);
        assert_eq!(kinds(&swap, &deleted), vec![NoticeKind::DeviceUnbacked]);
        let torn_down = verdicts(&[launcher(d1), attach("new", d2)], &[d2]);
        assert_eq!(kinds(&deleted, &torn_down), vec![NoticeKind::DeviceVanished]);
    }

    #[test]
    fn swap_with_the_same_device_says_nothing_and_recovery_is_news() {
        let d1 = DevNum::new(7, 1);
        let steady = verdicts(&[launcher(d1), attach("old", d1)], &[d1]);
        let swap = verdicts(&[launcher(d1), attach("old", d1), attach("new", d1)], &[d1]);
        assert_eq!(kinds(&steady, &swap), vec![]);
        let gone = verdicts(&[launcher(d1), attach("new", d1)], &[]);
        let back = verdicts(&[launcher(d1), attach("new", d1)], &[d1]);
        assert_eq!(kinds(&gone, &back), vec![NoticeKind::DeviceReady]);
        // Found ready at start: not news.
        assert_eq!(kinds(&Verdicts::default(), &back), vec![]);
    }
}
