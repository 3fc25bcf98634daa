//! The deciding logic: from an [`Inventory`] to a verdict per launcher volume and per
//! attachment pod. Pure functions; the daemon, `scan` and the tests all call [`judge`].
//!
//! Per launcher volume ([`VolumeState`]):
//! - `pending`: an attachment pod of this launcher serves it, the launcher has no node yet
//!   (or a `<volume>.img` with nothing mounted on it);
//! - `ready`: the launcher's node or mount is there, its device exists, and a live
//!   attachment pod on the node serves the same device number;
//! - `vanished`: the node or mount is there but its device is gone from the kernel;
//! - `unbacked`: the device exists but no attachment pod on the node serves it any more;
//! - `replaced`: the device number now belongs to another disk (its `diskseq` changed since
//!   the volume was ready): the node reaches the wrong disk. Never `ready`.
//!
//! Per attachment pod: `handoff_safe` when deleting it now leaves every launcher device it
//! serves still served by another attachment pod. Device numbers decide: a new pod with
//! the same device (kernel rbd, one LUN) makes the old one safe to delete; a new pod with
//! a new device (nbd, NVMe-oF, iSCSI session per pod) does not.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::device::DevNum;
use crate::inventory::Inventory;
use crate::layout::{LauncherEntry, MountSite, PodDisks, PodUid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    Pending,
    Ready,
    Vanished,
    Unbacked,
    /// The device number now belongs to a different disk than the one the volume had when
    /// it was ready: the VM's node reaches the wrong disk.
    Replaced,
}

impl VolumeState {
    pub const ALL: [VolumeState; 5] =
        [VolumeState::Pending, VolumeState::Ready, VolumeState::Vanished, VolumeState::Unbacked, VolumeState::Replaced];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Pending => "pending",
            VolumeState::Ready => "ready",
            VolumeState::Vanished => "vanished",
            VolumeState::Unbacked => "unbacked",
            VolumeState::Replaced => "replaced",
        }
    }

    /// The launcher's node or mount points at a device that exists.
    pub fn device_present(self) -> bool {
        matches!(self, VolumeState::Ready | VolumeState::Unbacked)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeMode {
    Block,
    Filesystem,
}

/// A hotplug volume as the VM sees it: a launcher pod and the volume's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeKey {
    pub launcher: PodUid,
    pub volume: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeVerdict {
    pub mode: VolumeMode,
    pub state: VolumeState,
    /// The device the launcher's node or mount points at; `None` while pending.
    pub device: Option<DevNum>,
    /// Attachment pods on the node that serve this device (or, while pending, that will).
    pub backing_pods: BTreeSet<PodUid>,
    /// Whether the VMI's spec still has the volume (cluster mode); `Some(false)` means an
    /// unplug is in progress and losing the device is expected, not an alarm.
    pub in_spec: Option<bool>,
}

impl VolumeVerdict {
    /// A lost device or backing someone should hear about: not a volume being unplugged.
    pub fn is_alarm(&self) -> bool {
        matches!(self.state, VolumeState::Vanished | VolumeState::Unbacked | VolumeState::Replaced)
            && self.in_spec != Some(false)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentVerdict {
    /// Volume names this pod serves: its block volumes, and the launcher volumes its
    /// filesystem mounts back.
    pub volumes: BTreeSet<String>,
    /// The launcher pod it works for, when known or inferable.
    pub launcher: Option<PodUid>,
    /// Launcher volumes whose device only this pod serves: deleting the pod orphans them.
    pub sole_backer_of: BTreeSet<VolumeKey>,
    /// Another attachment pod of the same launcher may replace this one, so the controller
    /// may be about to delete it: where ages are known (cluster mode), a newer pod or one
    /// created in the same second; where they are not, any other pod of the launcher.
    pub superseded: bool,
    /// What the pod's own nodes and mounts point at, and whether that device exists: its
    /// block volumes by name, its filesystem mounts by path under its volumes directory.
    pub devices: BTreeMap<String, (DevNum, bool)>,
}

impl AttachmentVerdict {
    pub fn handoff_safe(&self) -> bool {
        self.sole_backer_of.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub volumes: BTreeMap<VolumeKey, VolumeVerdict>,
    pub attachment_pods: BTreeMap<PodUid, AttachmentVerdict>,
}

/// Which attachment pods serve which device, and what each serves.
struct Served<'a> {
    by_device: BTreeMap<DevNum, BTreeSet<&'a PodUid>>,
    block_volumes: BTreeMap<&'a PodUid, &'a BTreeMap<String, DevNum>>,
}

impl<'a> Served<'a> {
    fn collect(inv: &'a Inventory) -> Self {
        let mut served = Served { by_device: BTreeMap::new(), block_volumes: BTreeMap::new() };
        for (uid, disks) in inv.pods() {
            if let PodDisks::Attachment(vols) = disks {
                served.block_volumes.insert(uid, vols);
                for dev in vols.values() {
                    served.by_device.entry(*dev).or_default().insert(uid);
                }
            }
        }
        // A filesystem volume's source is the attachment pod's PVC mount under its own
        // pod directory: the same device number backs the launcher's bind mount.
        for (site, dev) in inv.mounts() {
            if let MountSite::PodVolume { pod, .. } = site {
                if let Some((uid, _)) = served.block_volumes.get_key_value(pod) {
                    served.by_device.entry(*dev).or_default().insert(*uid);
                }
            }
        }
        served
    }

    fn backers(&self, dev: DevNum) -> BTreeSet<PodUid> {
        self.by_device.get(&dev).map(|s| s.iter().map(|u| (*u).clone()).collect()).unwrap_or_default()
    }
}

pub fn judge(inv: &Inventory) -> Verdicts {
    let served = Served::collect(inv);
    let mut verdicts = Verdicts::default();
    let mut launchers: BTreeMap<&PodUid, &BTreeMap<String, LauncherEntry>> = BTreeMap::new();

    for (uid, disks) in inv.pods() {
        let PodDisks::Launcher(entries) = disks else {
            continue;
        };
        launchers.insert(uid, entries);
        for (volume, entry) in entries {
            let (mode, device) = match entry {
                LauncherEntry::Block(dev) => (VolumeMode::Block, Some(*dev)),
                LauncherEntry::Image => {
                    let site = MountSite::LauncherImage { pod: uid.clone(), volume: volume.clone() };
                    (VolumeMode::Filesystem, inv.mounts().get(&site).copied())
                }
                LauncherEntry::Directory => continue,
            };
            let backing_pods = device.map(|d| served.backers(d)).unwrap_or_default();
            let replaced = |d: DevNum| {
                let (then, now) = (inv.remembered(uid, volume, d), inv.identity(d));
                then.is_some() && now.is_some() && then != now
            };
            let state = match device {
                None => VolumeState::Pending,
                Some(d) if !inv.device_present(d) => VolumeState::Vanished,
                Some(d) if replaced(d) => VolumeState::Replaced,
                Some(_) if backing_pods.is_empty() => VolumeState::Unbacked,
                Some(_) => VolumeState::Ready,
            };
            let in_spec = inv.in_spec(uid, volume);
            let key = VolumeKey { launcher: uid.clone(), volume: volume.clone() };
            verdicts.volumes.insert(key, VolumeVerdict { mode, state, device, backing_pods, in_spec });
        }
    }

    // Indexes over the volumes, built once, so that judging stays linear in the size of the
    // node (thousands of volumes are re-judged on every batch of events).
    // Attachment pod -> the volumes it backs, and -> the first launcher (in volume order)
    // that uses one of its devices.
    let mut backs: BTreeMap<&PodUid, Vec<(&VolumeKey, &VolumeVerdict)>> = BTreeMap::new();
    let mut first_user: BTreeMap<&PodUid, &PodUid> = BTreeMap::new();
    for (key, v) in &verdicts.volumes {
        for pod in &v.backing_pods {
            backs.entry(pod).or_default().push((key, v));
        }
        for pod in v.device.and_then(|d| served.by_device.get(&d)).into_iter().flatten() {
            first_user.entry(pod).or_insert(&key.launcher);
        }
    }
    // Attachment pod -> what its PVC mounts under its own directory point at.
    let mut pod_mounts: BTreeMap<&PodUid, Vec<(&String, DevNum)>> = BTreeMap::new();
    for (site, dev) in inv.mounts() {
        if let MountSite::PodVolume { pod, path } = site {
            pod_mounts.entry(pod).or_default().push((path, *dev));
        }
    }

    let owners: BTreeMap<&PodUid, Option<PodUid>> =
        served.block_volumes.keys().map(|&pod| (pod, owner(inv, pod, &first_user, &launchers))).collect();
    // Where cluster mode knows the pods' ages, the newest attachment pod of each launcher
    // is the one KubeVirt keeps ("current"); it deletes all others at once. Creation times
    // have whole seconds: pods created in the same second are all candidates, and which
    // one stays is not known, so each counts as possibly deleted (superseded) and only
    // the candidates can take over from one another.
    let mut newest: BTreeMap<&PodUid, (i64, BTreeSet<&PodUid>)> = BTreeMap::new();
    for (&pod, launcher) in &owners {
        if let (Some(l), Some(t)) = (launcher, inv.created(pod)) {
            let (at, pods) = newest.entry(l).or_insert((t, BTreeSet::new()));
            if t > *at {
                (*at, *pods) = (t, BTreeSet::new());
            }
            if t == *at {
                pods.insert(pod);
            }
        }
    }
    let mut attachment_pods = BTreeMap::new();
    for (&pod, block_volumes) in &served.block_volumes {
        let launcher = owners[pod].clone();
        // Who can take over from this pod: for an old pod, only the current one (two old
        // pods must not vouch for each other and both go); for the current pod, or where
        // ages are unknown, any other pod serving the device.
        let candidates = launcher.as_ref().and_then(|l| newest.get(l)).map(|(_, pods)| pods);
        let sole_current = candidates.is_some_and(|c| c.len() == 1 && c.contains(pod));
        let current = candidates.filter(|_| inv.age_known(pod) && !sole_current);
        let takes_over = |b: &PodUid| current.is_none_or(|c| c.contains(b));
        let superseded = match (&launcher, inv.age_known(pod)) {
            (Some(_), true) => !sole_current,
            (Some(l), false) => owners.iter().any(|(&other, o)| other != pod && o.as_ref() == Some(l)),
            (None, _) => false,
        };
        let mut devices: BTreeMap<String, (DevNum, bool)> =
            block_volumes.iter().map(|(v, d)| (v.clone(), (*d, inv.device_present(*d)))).collect();
        for (path, dev) in pod_mounts.get(pod).into_iter().flatten() {
            devices.insert((*path).clone(), (*dev, inv.device_present(*dev)));
        }
        let mut att = AttachmentVerdict {
            volumes: block_volumes.keys().cloned().collect(),
            launcher: launcher.clone(),
            sole_backer_of: BTreeSet::new(),
            superseded,
            devices,
        };
        for (key, v) in backs.get(pod).into_iter().flatten() {
            att.volumes.insert(key.volume.clone());
            if !v.backing_pods.iter().any(|b| b != pod && takes_over(b)) {
                att.sole_backer_of.insert((*key).clone());
            }
        }
        attachment_pods.insert(pod.clone(), att);
    }
    verdicts.attachment_pods = attachment_pods;

    // Volumes an attachment pod serves that its launcher does not show yet.
    for (pod, att) in &verdicts.attachment_pods {
        let Some(launcher) = &att.launcher else {
            continue;
        };
        let Some(entries) = launchers.get(launcher) else {
            continue;
        };
        for volume in served.block_volumes[pod].keys() {
            if entries.contains_key(volume) {
                continue;
            }
            let key = VolumeKey { launcher: launcher.clone(), volume: volume.clone() };
            verdicts
                .volumes
                .entry(key)
                .or_insert_with(|| VolumeVerdict {
                    mode: VolumeMode::Block,
                    state: VolumeState::Pending,
                    device: None,
                    backing_pods: BTreeSet::new(),
                    in_spec: inv.in_spec(launcher, volume),
                })
                .backing_pods
                .insert(pod.clone());
        }
    }
    verdicts
}

/// The launcher pod an attachment pod works for: what cluster mode says (its controller
/// ownerReference); else the launcher that already uses one of its devices; else the only
/// launcher on the node. With several launchers and no device in use yet it is unknown.
fn owner(
    inv: &Inventory,
    pod: &PodUid,
    first_user: &BTreeMap<&PodUid, &PodUid>,
    launchers: &BTreeMap<&PodUid, &BTreeMap<String, LauncherEntry>>,
) -> Option<PodUid> {
    if let Some(l) = inv.owner_of(pod) {
        return Some(l.clone());
    }
    if let Some(l) = first_user.get(pod) {
        return Some((*l).clone());
    }
    match launchers.keys().collect::<Vec<_>>().as_slice() {
        [only] => Some((**only).clone()),
        _ => None,
    }
}

/// A volume's state changed, or the volume appeared (`from: None`) or went (`to: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeTransition {
    pub key: VolumeKey,
    pub from: Option<VolumeState>,
    pub to: Option<VolumeState>,
    pub device: Option<DevNum>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffTransition {
    pub pod: PodUid,
    pub from: Option<bool>,
    pub to: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    pub volumes: Vec<VolumeTransition>,
    pub handoffs: Vec<HandoffTransition>,
}

impl Transitions {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.handoffs.is_empty()
    }
}

/// What changed between two verdicts: the only things worth a log line, a counter or
/// (in cluster mode) a write.
pub fn transitions(old: &Verdicts, new: &Verdicts) -> Transitions {
    let mut out = Transitions::default();
    let keys: BTreeSet<&VolumeKey> = old.volumes.keys().chain(new.volumes.keys()).collect();
    for key in keys {
        let (a, b) = (old.volumes.get(key), new.volumes.get(key));
        let (from, to) = (a.map(|v| v.state), b.map(|v| v.state));
        if from != to {
            let device = b.or(a).and_then(|v| v.device);
            out.volumes.push(VolumeTransition { key: key.clone(), from, to, device });
        }
    }
    let pods: BTreeSet<&PodUid> = old.attachment_pods.keys().chain(new.attachment_pods.keys()).collect();
    for pod in pods {
        let from = old.attachment_pods.get(pod).map(AttachmentVerdict::handoff_safe);
        let to = new.attachment_pods.get(pod).map(AttachmentVerdict::handoff_safe);
        if from != to {
            out.handoffs.push(HandoffTransition { pod: pod.clone(), from, to });
        }
    }
    out
}

#[cfg(test)]
mod tests;
