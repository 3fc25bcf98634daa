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
//! Per attachment pod: [`HandoffReason`], whether deleting it now is safe (`True`), not
//! (`False`: it alone serves a device the VM uses), or cannot be told (`Unknown`). Device
//! numbers decide: a new pod with the same device (kernel rbd, one LUN) makes the old one
//! safe to delete; a new pod with a new device (nbd, NVMe-oF, iSCSI session per pod) does
//! not. In cluster mode the roles (which directory is whose launcher or attachment pod)
//! come from the API only: a directory the API does not confirm decides nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::inventory::{merge_join, Changes, Inventory, PodFact};
pub use crate::model::{ConditionStatus, HandoffReason, VolumeKey, VolumeMode, VolumeState};
use crate::model::{DevNum, DiskId, Finished, LauncherEntry, PodDisks, PodUid};

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
    /// The disk the volume's device number reached when the VM first used it: learned by
    /// judging (each verdict hands it to the next), to tell when the number is reused
    /// for another disk (`replaced`). Lost on restart and learned again: the one thing
    /// no read of the node can rebuild.
    pub disk: Option<(DevNum, DiskId)>,
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
    /// The launcher pod it works for: from the API in cluster mode; inferred in
    /// standalone mode, when it can be.
    pub launcher: Option<PodUid>,
    /// Launcher volumes (still in the VMI's spec) whose device only this pod serves among
    /// the pods that may stay: deleting the pod orphans them.
    pub sole_backer_of: BTreeSet<VolumeKey>,
    /// Another attachment pod of the same launcher may replace this one, so the controller
    /// may be about to delete it: where ages are known (cluster mode), a newer pod or one
    /// created in the same second; where they are not, any other pod of the launcher.
    pub superseded: bool,
    /// What the pod's own nodes and mounts point at, and whether that device exists: its
    /// block volumes by name, its filesystem mounts by path under its volumes directory.
    pub devices: BTreeMap<String, (DevNum, bool)>,
    /// Whether deleting it now is safe, and why.
    pub handoff: HandoffReason,
}

impl AttachmentVerdict {
    /// Safe on positive evidence only: `Unknown` is not safe.
    pub fn handoff_safe(&self) -> bool {
        self.handoff.status() == ConditionStatus::True
    }

    /// The volumes deleting this pod would orphan, as a person reads them: `disk1 (7:1)`.
    pub fn orphans(&self, verdicts: &Verdicts) -> Vec<String> {
        self.sole_backer_of
            .iter()
            .map(|k| {
                let dev = verdicts.volumes.get(k).and_then(|v| v.device).map_or("-".into(), |d| d.to_string());
                format!("{} ({dev})", k.volume)
            })
            .collect()
    }
}

/// The verdicts on the whole node: one immutable value per batch. The maps are persistent
/// (`imbl`): a copy shares all it does not change, so publishing a snapshot per batch and
/// re-judging one VM cost the same at 10 volumes and at 10,000.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Each verdict shared (`Arc`): a batch that changes one entry copies the map's node
    /// around it, and a copied node then clones pointers, not every verdict in it (an
    /// attachment pod's verdict holds three collections).
    pub volumes: OrdMap<VolumeKey, Arc<VolumeVerdict>>,
    pub attachment_pods: OrdMap<PodUid, Arc<AttachmentVerdict>>,
    /// Cluster mode: pod directories with a hotplug-disks directory whose UID the API does
    /// not confirm as a launcher or attachment pod on this node. They decide nothing.
    pub unconfirmed: OrdSet<PodUid>,
    /// The attachment pods judged with each launcher (the groups of [`rejudge`]).
    by_launcher: OrdMap<PodUid, OrdSet<PodUid>>,
    /// Roles came from the API (cluster mode, after the watches synced), not from
    /// directories: only such verdicts may become conditions.
    pub roles_from_api: bool,
    /// A full scan of the node went into these verdicts.
    pub full_scan: bool,
}

/// The role a pod directory plays in judging.
enum Role<'a> {
    Launcher { entries: Option<&'a BTreeMap<String, LauncherEntry>>, unreadable: bool },
    Attachment { volumes: Option<&'a BTreeMap<String, DevNum>>, unreadable: bool },
}

/// Which pod directory plays which role. Cluster mode: the API says, and a directory the
/// API does not confirm plays none. Standalone: the directory's shape says.
fn roles<'a>(
    inv: &'a Inventory,
    pods: impl IntoIterator<Item = (&'a PodUid, &'a PodFact)>,
) -> (BTreeMap<&'a PodUid, Role<'a>>, BTreeSet<PodUid>) {
    let mut roles = BTreeMap::new();
    let mut unconfirmed = BTreeSet::new();
    for (uid, fact) in pods {
        let unreadable = fact.unreadable.is_some();
        let (launcher_entries, attachment_volumes) = match &fact.disks {
            Some(PodDisks::Launcher(e)) => (Some(e), None),
            Some(PodDisks::Attachment(v)) => (None, Some(v)),
            None => (None, None),
        };
        let role = match inv.cluster() {
            Some(api) if api.launchers.contains_key(uid) => {
                // An attachment-shaped directory under a launcher is not what KubeVirt
                // makes: its volumes cannot be known.
                let odd = fact.disks.is_some() && launcher_entries.is_none();
                Role::Launcher { entries: launcher_entries, unreadable: unreadable || odd }
            }
            // A directory without a socket or block volumes yet is an attachment pod being
            // set up: it serves nothing so far. Launcher-shaped entries in it are ignored.
            Some(api) if api.attachment_pods.contains_key(uid) => {
                Role::Attachment { volumes: attachment_volumes, unreadable }
            }
            Some(_) => {
                unconfirmed.insert(uid.clone());
                continue;
            }
            None => match (launcher_entries, attachment_volumes) {
                (Some(e), _) => Role::Launcher { entries: Some(e), unreadable },
                (_, Some(v)) => Role::Attachment { volumes: Some(v), unreadable },
                // Never read whole, role unknown: the skip entry says so.
                (None, None) => continue,
            },
        };
        roles.insert(uid, role);
    }
    (roles, unconfirmed)
}

/// Which attachment pods serve which device, and what each serves.
struct Served<'a> {
    by_device: BTreeMap<DevNum, BTreeSet<&'a PodUid>>,
    block_volumes: BTreeMap<&'a PodUid, &'a BTreeMap<String, DevNum>>,
}

static NO_VOLUMES: BTreeMap<String, DevNum> = BTreeMap::new();

impl<'a> Served<'a> {
    fn collect(inv: &'a Inventory, roles: &BTreeMap<&'a PodUid, Role<'a>>) -> Self {
        let mut served = Served { by_device: BTreeMap::new(), block_volumes: BTreeMap::new() };
        for (&uid, role) in roles {
            if let Role::Attachment { volumes, .. } = role {
                let vols = volumes.unwrap_or(&NO_VOLUMES);
                served.block_volumes.insert(uid, vols);
                for dev in vols.values() {
                    served.by_device.entry(*dev).or_default().insert(uid);
                }
            }
        }
        // A filesystem volume's source is the attachment pod's PVC mount under its own
        // pod directory: the same device number backs the launcher's bind mount.
        let uids: Vec<&'a PodUid> = served.block_volumes.keys().copied().collect();
        for uid in uids {
            for (_, dev) in inv.pod_mounts(uid) {
                served.by_device.entry(dev).or_default().insert(uid);
            }
        }
        served
    }

    fn backers(&self, dev: DevNum) -> impl Iterator<Item = &'a PodUid> + '_ {
        self.by_device.get(&dev).into_iter().flatten().copied()
    }
}

/// Judges a node from scratch, with nothing learned before (`scan`, tests).
pub fn judge(inv: &Inventory) -> Verdicts {
    judge_all(inv, &Verdicts::default())
}

/// Judges every pod; `prev` hands over what earlier verdicts learned (each volume's disk).
pub fn judge_all(inv: &Inventory, prev: &Verdicts) -> Verdicts {
    let judged = judge_pods(inv, inv.pod_facts(), prev);
    let mut v =
        Verdicts { roles_from_api: inv.cluster().is_some(), full_scan: inv.has_full_scan(), ..Default::default() };
    v.unconfirmed = judged.unconfirmed.iter().cloned().collect();
    v.insert(judged);
    v
}

/// What judging some pods concluded.
#[derive(Default)]
struct Judged {
    volumes: BTreeMap<VolumeKey, Arc<VolumeVerdict>>,
    attachment_pods: BTreeMap<PodUid, Arc<AttachmentVerdict>>,
    unconfirmed: BTreeSet<PodUid>,
}

impl Verdicts {
    fn insert(&mut self, judged: Judged) {
        for (pod, a) in &judged.attachment_pods {
            if let Some(l) = &a.launcher {
                self.by_launcher.entry(l.clone()).or_default().insert(pod.clone());
            }
        }
        self.volumes.extend(judged.volumes);
        self.attachment_pods.extend(judged.attachment_pods);
    }

    /// The attachment pods judged with `launcher` (those that work for it): the only pods
    /// whose verdicts name its volumes.
    pub fn attachment_pods_of(&self, launcher: &PodUid) -> impl Iterator<Item = &PodUid> {
        self.by_launcher.get(launcher).into_iter().flatten()
    }

    /// Takes out everything judged with `launcher`: its volumes and its attachment pods.
    fn remove_group(&mut self, launcher: &PodUid) -> Judged {
        let mut out = Judged::default();
        let first = VolumeKey { launcher: launcher.clone(), volume: String::new() };
        let keys: Vec<VolumeKey> =
            self.volumes.range(first..).map(|(k, _)| k).take_while(|k| k.launcher == *launcher).cloned().collect();
        for k in keys {
            if let Some(v) = self.volumes.remove(&k) {
                out.volumes.insert(k, v);
            }
        }
        for pod in self.by_launcher.remove(launcher).unwrap_or_default() {
            if let Some(a) = self.attachment_pods.remove(&pod) {
                out.attachment_pods.insert(pod, a);
            }
        }
        out
    }
}

/// Judges again only what `changes` touched, and what depends on it; the result equals
/// [`judge_all`] (property-tested). In cluster mode the API partitions the node: a
/// launcher and the attachment pods it owns are judged together and depend on nothing
/// else (only a launcher's own attachment pods back its volumes), so a batch re-judges the
/// launchers whose pods, devices, mounts or API records changed. Standalone mode infers
/// owners across the node, and is judged whole. `None`: nothing changed.
pub fn rejudge(prev: &Verdicts, inv: &Inventory, changes: &Changes) -> Option<(Verdicts, Transitions)> {
    let same_footing = prev.roles_from_api == inv.cluster().is_some() && prev.full_scan == inv.has_full_scan();
    if changes.is_empty() && same_footing {
        return None;
    }
    let Some(api) = inv.cluster() else { return whole(prev, inv) };
    if changes.everything || !same_footing {
        return whole(prev, inv);
    }
    // Which launcher's group a pod belongs to: itself, or the launcher the API says owns it.
    let group_of = |p: &PodUid| -> Option<PodUid> {
        if api.launchers.contains_key(p) {
            Some(p.clone())
        } else {
            api.attachment_pods.get(p).map(|a| a.launcher.clone())
        }
    };
    let mut groups: BTreeSet<PodUid> = BTreeSet::new();
    let mut touched: BTreeSet<&PodUid> = changes.pods.iter().chain(&changes.api_pods).collect();
    for d in &changes.devices {
        touched.extend(inv.users_of(*d));
    }
    let mut next = prev.clone();
    let mut unconfirmed_changed = false;
    for p in &touched {
        // Attachment pods name their launcher's UID whether or not the API confirms it as
        // a launcher: its directory coming or going (LauncherGone) concerns them.
        if inv.attachments_of(p).next().is_some() {
            groups.insert((*p).clone());
        }
        let group = group_of(p);
        unconfirmed_changed |= if group.is_none() && inv.pod_fact_of(p).is_some() {
            next.unconfirmed.insert((*p).clone()).is_none()
        } else {
            next.unconfirmed.remove(*p).is_some()
        };
        groups.extend(group);
    }
    // A launcher whose record changed, or that an attachment pod left: its group, even
    // if the API no longer knows it (its attachment pods are judged with it still).
    groups.extend(changes.api_pods.iter().cloned());
    // Take every touched group out, then put each back judged anew: a pod that changed
    // launchers leaves one group and joins another, one change.
    let (mut before, mut after) = (Judged::default(), Judged::default());
    for g in &groups {
        let old = next.remove_group(g);
        before.volumes.extend(old.volumes);
        before.attachment_pods.extend(old.attachment_pods);
    }
    for g in &groups {
        let members = std::iter::once(g)
            .filter(|l| api.launchers.contains_key(*l))
            .chain(inv.attachments_of(g))
            .filter_map(|p| Some((p, inv.pod_fact_of(p)?)));
        let new = judge_pods(inv, members, prev);
        after.volumes.extend(new.volumes.iter().map(|(k, v)| (k.clone(), v.clone())));
        after.attachment_pods.extend(new.attachment_pods.iter().map(|(k, v)| (k.clone(), v.clone())));
        next.insert(new);
    }
    // Compared within the touched groups only: comparing whole maps would cost a walk of
    // the node per batch.
    let changed =
        unconfirmed_changed || before.volumes != after.volumes || before.attachment_pods != after.attachment_pods;
    let mut out = Transitions::default();
    diff_into(
        &mut out,
        before.volumes.iter(),
        after.volumes.iter(),
        before.attachment_pods.iter(),
        after.attachment_pods.iter(),
    );
    changed.then_some((next, out))
}

/// Judges everything again (see [`rejudge`]); `None` if nothing changed.
fn whole(prev: &Verdicts, inv: &Inventory) -> Option<(Verdicts, Transitions)> {
    let next = judge_all(inv, prev);
    (next != *prev).then(|| {
        let t = transitions(prev, &next);
        (next, t)
    })
}

/// Judges the given pods (a whole node, or one launcher's group in cluster mode).
fn judge_pods<'a>(
    inv: &'a Inventory,
    pods: impl IntoIterator<Item = (&'a PodUid, &'a PodFact)>,
    prev: &Verdicts,
) -> Judged {
    let (roles, unconfirmed) = roles(inv, pods);
    let served = Served::collect(inv, &roles);
    let api = inv.cluster();
    let mut volumes: BTreeMap<VolumeKey, VolumeVerdict> = BTreeMap::new();
    let launchers: BTreeMap<&PodUid, &BTreeMap<String, LauncherEntry>> = roles
        .iter()
        .filter_map(|(&uid, r)| match r {
            Role::Launcher { entries, .. } => Some((uid, entries.unwrap_or(&NO_ENTRIES))),
            Role::Attachment { .. } => None,
        })
        .collect();

    // Attachment pod -> the launcher it works for. The API's word in cluster mode, where
    // nothing is inferred; in standalone mode the launcher that already uses one of its
    // devices, else the only launcher on the node.
    let mut first_user: BTreeMap<&PodUid, &PodUid> = BTreeMap::new();
    if api.is_none() {
        for (&launcher, entries) in &launchers {
            for (volume, entry) in entries.iter() {
                let device = entry_device(inv, launcher, volume, entry).and_then(|(_, d)| d);
                for pod in device.into_iter().flat_map(|d| served.backers(d)) {
                    first_user.entry(pod).or_insert(launcher);
                }
            }
        }
    }
    let owners: BTreeMap<&PodUid, Option<PodUid>> = served
        .block_volumes
        .keys()
        .map(|&pod| {
            let owner = match api {
                Some(_) => inv.owner_of(pod).cloned(),
                None => {
                    first_user.get(pod).map(|l| (*l).clone()).or_else(|| match launchers.keys().collect::<Vec<_>>()[..]
                    {
                        [only] => Some((*only).clone()),
                        _ => None,
                    })
                }
            };
            (pod, owner)
        })
        .collect();

    let mut pending_filesystem: BTreeSet<&PodUid> = BTreeSet::new();
    for (&uid, entries) in &launchers {
        for (volume, entry) in entries.iter() {
            let Some((mode, device)) = entry_device(inv, uid, volume, entry) else { continue };
            // In cluster mode only the launcher's own attachment pods back its volumes: a
            // pod of another VM (or one the API does not confirm) serving the same number
            // is no backing it can count on.
            let backing_pods: BTreeSet<PodUid> = device
                .into_iter()
                .flat_map(|d| served.backers(d))
                .filter(|b| api.is_none() || owners.get(b).is_some_and(|o| o.as_ref() == Some(uid)))
                .cloned()
                .collect();
            let key = VolumeKey { launcher: uid.clone(), volume: volume.clone() };
            // The disk learned earlier, if the node still points at the same number.
            let known = prev.volumes.get(&key).and_then(|v| v.disk.clone());
            let remembered = known.as_ref().filter(|(d, _)| Some(*d) == device).map(|(_, id)| id);
            let replaced = |d: DevNum| {
                let now = inv.identity(d);
                remembered.is_some() && now.is_some() && remembered != now
            };
            let state = match device {
                None => VolumeState::Pending,
                Some(d) if !inv.device_present(d) => VolumeState::Vanished,
                Some(d) if replaced(d) => VolumeState::Replaced,
                Some(_) if backing_pods.is_empty() => VolumeState::Unbacked,
                Some(_) => VolumeState::Ready,
            };
            // Learn which disk the VM uses (ready, or unbacked: the VM uses it all the
            // same) unless it is known for this number already.
            let disk = match device {
                Some(d) if remembered.is_none() && state.device_present() => {
                    inv.identity(d).map(|id| (d, id.clone())).or(known)
                }
                _ => known,
            };
            let in_spec = inv.in_spec(uid, volume);
            if mode == VolumeMode::Filesystem && state == VolumeState::Pending && in_spec != Some(false) {
                pending_filesystem.insert(uid);
            }
            volumes.insert(key, VolumeVerdict { mode, state, device, backing_pods, in_spec, disk });
        }
    }

    // Attachment pod -> the volumes it backs (an index, so that judging stays linear in
    // the size of the node: thousands of volumes are re-judged on every batch).
    let mut backs: BTreeMap<&PodUid, Vec<(&VolumeKey, &VolumeVerdict)>> = BTreeMap::new();
    for (key, v) in &volumes {
        for pod in &v.backing_pods {
            backs.entry(pod).or_default().push((key, v));
        }
    }

    // Where cluster mode knows the pods' ages, the newest attachment pod of each launcher
    // is the one KubeVirt keeps ("current"); it deletes all others at once. Creation times
    // have whole seconds: pods created in the same second are all candidates, which one
    // stays is not known, so each counts as possibly deleted (superseded).
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
        let candidates = launcher.as_ref().and_then(|l| newest.get(l)).map(|(_, pods)| pods);
        let sole_current = candidates.is_some_and(|c| c.len() == 1 && c.contains(pod));
        let superseded = match (&launcher, inv.age_known(pod)) {
            (Some(_), true) => !sole_current,
            (Some(l), false) => owners.iter().any(|(&other, o)| other != pod && o.as_ref() == Some(l)),
            (None, _) => false,
        };
        // Who must serve a device for this pod to go: the pods that stay. KubeVirt keeps
        // exactly one of the candidates (which one, when several were created in the same
        // second, is not known) and deletes every other pod. So for an old pod, or one of
        // several candidates, every *other* candidate must serve it: two pods that may
        // both go never vouch for each other. For the sole current pod (never deleted by
        // this cleanup) or where ages are unknown, any other pod serving it will do.
        let must_serve: Option<Vec<&PodUid>> = candidates
            .filter(|_| inv.age_known(pod) && !sole_current)
            .map(|c| c.iter().copied().filter(|c| *c != pod).collect());
        let stays_served = |v: &VolumeVerdict| match &must_serve {
            Some(stay) => !stay.is_empty() && stay.iter().all(|s| v.backing_pods.contains(*s)),
            None => v.backing_pods.iter().any(|b| b != pod),
        };
        let mut devices: BTreeMap<String, (DevNum, bool)> =
            block_volumes.iter().map(|(v, d)| (v.clone(), (*d, inv.device_present(*d)))).collect();
        for (path, dev) in inv.pod_mounts(pod) {
            devices.insert(path.clone(), (dev, inv.device_present(dev)));
        }
        let mut volumes: BTreeSet<String> = block_volumes.keys().cloned().collect();
        let mut sole_backer_of = BTreeSet::new();
        let mut in_use = false;
        for (key, v) in backs.get(pod).into_iter().flatten() {
            volumes.insert(key.volume.clone());
            // A volume that left the spec is being unplugged: losing it is expected.
            if v.in_spec == Some(false) {
                continue;
            }
            in_use = true;
            if !stays_served(v) {
                sole_backer_of.insert((*key).clone());
            }
        }
        let handoff = handoff(inv, pod, launcher.as_ref(), &pending_filesystem, &roles, &sole_backer_of, in_use);
        attachment_pods
            .insert(pod.clone(), AttachmentVerdict { volumes, launcher, sole_backer_of, superseded, devices, handoff });
    }

    // Volumes an attachment pod serves that its launcher does not show yet.
    for (pod, att) in &attachment_pods {
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
            volumes
                .entry(key)
                .or_insert_with(|| VolumeVerdict {
                    mode: VolumeMode::Block,
                    state: VolumeState::Pending,
                    device: None,
                    backing_pods: BTreeSet::new(),
                    in_spec: inv.in_spec(launcher, volume),
                    disk: None,
                })
                .backing_pods
                .insert(pod.clone());
        }
    }
    Judged {
        volumes: volumes.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        attachment_pods: attachment_pods.into_iter().map(|(k, a)| (k, Arc::new(a))).collect(),
        unconfirmed,
    }
}

static NO_ENTRIES: BTreeMap<String, LauncherEntry> = BTreeMap::new();

/// A launcher volume's mode and the device the VM reaches it through: its node's, or the
/// device of what is mounted on its image (`None` while nothing is). Utility directories
/// are no volume.
fn entry_device(
    inv: &Inventory,
    launcher: &PodUid,
    volume: &str,
    entry: &LauncherEntry,
) -> Option<(VolumeMode, Option<DevNum>)> {
    match entry {
        LauncherEntry::Block(dev) => Some((VolumeMode::Block, Some(*dev))),
        LauncherEntry::Image => Some((VolumeMode::Filesystem, inv.image_mount(launcher, volume))),
        LauncherEntry::Directory => None,
    }
}

/// Whether deleting `pod` now is safe. First what makes protection moot (nothing of the
/// VM is left to lose), then every doubt (each one `Unknown`), and only then the devices.
fn handoff(
    inv: &Inventory,
    pod: &PodUid,
    launcher: Option<&PodUid>,
    pending_filesystem: &BTreeSet<&PodUid>,
    roles: &BTreeMap<&PodUid, Role<'_>>,
    sole_backer_of: &BTreeSet<VolumeKey>,
    in_use: bool,
) -> HandoffReason {
    use HandoffReason::*;
    if let Some(api) = inv.cluster() {
        let Some(launcher) = launcher else { return LauncherNotConfirmed };
        if api.attachment_pods.get(pod).is_some_and(|a| a.trigger) {
            return TriggerPod;
        }
        match api.launchers.get(launcher).and_then(|l| l.finished) {
            Some(Finished::VmiFinal) => return VmiFinal,
            Some(Finished::LauncherDone) => return LauncherGone,
            None => {}
        }
        // No hotplug directory of the launcher on the node: nothing of it is in use.
        if inv.pod_gone(launcher) {
            return LauncherGone;
        }
        if !api.launchers.contains_key(launcher) {
            return LauncherNotConfirmed;
        }
    }
    if let Some(Role::Launcher { unreadable: true, .. }) = launcher.and_then(|l| roles.get(l)) {
        return LauncherUnreadable;
    }
    if let Some(Role::Attachment { unreadable: true, .. }) = roles.get(pod) {
        return DirectoryUnreadable;
    }
    if inv.mount_view_mismatch() {
        return MountTableMismatch;
    }
    if launcher.is_some_and(|l| pending_filesystem.contains(l)) {
        return FilesystemVolumePending;
    }
    if !sole_backer_of.is_empty() {
        SoleBacker
    } else if in_use {
        DevicesServedElsewhere
    } else {
        NoDeviceInUse
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
    pub from: Option<HandoffReason>,
    pub to: Option<HandoffReason>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    pub volumes: Vec<VolumeTransition>,
    pub handoffs: Vec<HandoffTransition>,
    /// Attachment pods whose verdict changed in any way (what notices look at).
    pub attachment_pods: Vec<PodUid>,
}

impl Transitions {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.handoffs.is_empty()
    }
}

/// What changed between two verdicts on the whole node: the only things worth a log
/// line, a counter or (in cluster mode) a write.
pub fn transitions(old: &Verdicts, new: &Verdicts) -> Transitions {
    let mut out = Transitions::default();
    diff_into(&mut out, old.volumes.iter(), new.volumes.iter(), old.attachment_pods.iter(), new.attachment_pods.iter());
    out
}

/// Appends what changed between two judgments of the same volumes and pods (each given
/// in key order, as every map here iterates).
fn diff_into<'a>(
    out: &mut Transitions,
    old_volumes: impl Iterator<Item = (&'a VolumeKey, &'a Arc<VolumeVerdict>)>,
    new_volumes: impl Iterator<Item = (&'a VolumeKey, &'a Arc<VolumeVerdict>)>,
    old_pods: impl Iterator<Item = (&'a PodUid, &'a Arc<AttachmentVerdict>)>,
    new_pods: impl Iterator<Item = (&'a PodUid, &'a Arc<AttachmentVerdict>)>,
) {
    for (key, a, b) in merge_join(old_volumes, new_volumes) {
        let (from, to) = (a.map(|v| v.state), b.map(|v| v.state));
        if from != to {
            let device = b.or(a).and_then(|v| v.device);
            out.volumes.push(VolumeTransition { key: key.clone(), from, to, device });
        }
    }
    for (pod, a, b) in merge_join(old_pods, new_pods) {
        if a == b {
            continue;
        }
        out.attachment_pods.push(pod.clone());
        let (from, to) = (a.map(|a| a.handoff), b.map(|a| a.handoff));
        if from != to {
            out.handoffs.push(HandoffTransition { pod: pod.clone(), from, to });
        }
    }
}

#[cfg(test)]
mod tests;
