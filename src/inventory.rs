//! The agent's picture of the node: the last thing seen about every pod directory, every
//! block device and the mount table. Pure: no I/O, no clock.
//!
//! Every observation carries a [`Seq`], taken from one counter *before* its source read
//! the kernel or the disk. For each fact the observation with the highest `Seq` wins,
//! whatever order observations arrive in. Any change after a read makes its source read
//! again (inotify, uevent, POLLPRI) with a higher `Seq`, so the winner always saw the
//! latest state. A full rescan sets a watermark: anything read before it is older than
//! what the rescan read, and is ignored. That makes the result independent of ordering,
//! duplicates and lost events once a rescan has run (property-tested in `verdict`).

use std::collections::{BTreeMap, BTreeSet};

pub use crate::model::{ApiAttachment, ApiLauncher, ClusterFacts, DiskId, Finished, Seq};
use crate::model::{DevNum, MountSite, PodDisks, PodUid, Unreadable};

/// What a source saw. Sources only observe; the inventory and the verdicts decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// One pod directory, read whole. `disks: None`: no hotplug-disks directory (or no
    /// pod). `unreadable`: the read failed part of the way (see [`PodFact`]).
    Pod { seq: Seq, uid: PodUid, disks: Option<PodDisks>, unreadable: Option<Unreadable> },
    /// A block device appeared in or left `/sys/dev/block` (a uevent, or a read of sysfs),
    /// with the identity of the disk behind the number when known (see [`DiskId`]).
    Device { seq: Seq, device: DevNum, present: bool, identity: Option<DiskId> },
    /// The mount table, read whole; only mounts inside the kubelet tree.
    Mounts { seq: Seq, mounts: BTreeMap<MountSite, DevNum> },
    /// Everything, read from scratch.
    FullScan(FullScan),
    /// What the API server says (cluster mode), replacing what it said before.
    Cluster(ClusterFacts),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FullScan {
    pub seq: Seq,
    /// Only pods that have a hotplug-disks directory.
    pub pods: BTreeMap<PodUid, PodDisks>,
    /// Pods whose directory could not be read whole, why, and what was read.
    pub unreadable: BTreeMap<PodUid, (Option<PodDisks>, Unreadable)>,
    pub devices: BTreeSet<DevNum>,
    /// The identity of the disk behind each present device, where known.
    pub identities: BTreeMap<DevNum, DiskId>,
    pub mounts: BTreeMap<MountSite, DevNum>,
}

/// What the agent knows of one pod directory: the last read, and whether that read
/// failed. A failed read keeps what an earlier read saw (volumes are never forgotten on an
/// error) and marks the pod, so that no safety verdict rests on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFact {
    pub disks: Option<PodDisks>,
    pub unreadable: Option<Unreadable>,
}

/// What changed in the inventory since [`Inventory::take_changes`]: what judging must look
/// at again. Only real changes are recorded (a read that finds what the last one found
/// changes nothing), so a steady node costs nothing to re-judge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Something that every verdict rests on changed (the first full scan, the mount-table
    /// check, roles coming from the API at last): judge everything.
    pub everything: bool,
    /// Pods whose directory read or whose mounts changed.
    pub pods: BTreeSet<PodUid>,
    /// Devices whose presence or identity changed.
    pub devices: BTreeSet<DevNum>,
    /// Pods whose record in the API changed (role, owner, spec, age, ...), and the
    /// launchers an attachment pod left or joined.
    pub api_pods: BTreeSet<PodUid>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.pods.is_empty() && self.devices.is_empty() && self.api_pods.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Latest read of each pod; `disks: None` records that a pod has no hotplug directory
    /// so that an older read cannot bring it back. Cleared of such entries at each full scan.
    pods: BTreeMap<PodUid, (Seq, PodFact)>,
    devices: BTreeMap<DevNum, (Seq, (bool, Option<DiskId>))>,
    mounts: (Seq, BTreeMap<MountSite, DevNum>),
    /// Which pods' nodes and mounts point at each device: whom a device's change concerns.
    /// Derived from `pods` and `mounts`, kept in step with them.
    users: BTreeMap<DevNum, BTreeSet<PodUid>>,
    /// The same, by pod: what to take out of `users` when a pod's reads change.
    uses: BTreeMap<PodUid, BTreeSet<DevNum>>,
    /// `None`: standalone mode, or cluster mode before the watches first synced: roles
    /// are inferred from directories (a diagnostic, never a source of safety).
    cluster: Option<ClusterFacts>,
    /// The mount table does not show the kubelet root the agent reads (checked with every
    /// full scan): filesystem volumes cannot be seen, and no handoff is judged safe.
    mount_view_mismatch: bool,
    /// Launcher -> the attachment pods the API says it owns: derived from `cluster`.
    owned: BTreeMap<PodUid, BTreeSet<PodUid>>,
    /// `Seq` of the latest full scan applied; 0 before the first.
    watermark: Seq,
    changes: Changes,
}

impl Inventory {
    pub fn apply(&mut self, obs: Observation) {
        match obs {
            Observation::Pod { seq, uid, disks, unreadable } => {
                if seq >= self.watermark {
                    let fact = self.pod_fact(&uid, disks, unreadable);
                    self.set_pod(uid, seq, fact);
                }
            }
            Observation::Device { seq, device, present, identity } => {
                if seq >= self.watermark {
                    self.set_device(device, seq, (present, identity));
                }
            }
            Observation::Mounts { seq, mounts } => {
                if seq >= self.watermark && seq >= self.mounts.0 {
                    self.set_mounts(seq, mounts);
                }
            }
            Observation::FullScan(scan) => self.apply_full_scan(scan),
            // The watches deliver whole, consistent stores: nothing to order.
            Observation::Cluster(facts) => self.set_cluster(facts),
        }
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// What a read of `uid` establishes: on an error, the last complete read stands (if
    /// any; else the partial one) and the pod is marked.
    fn pod_fact(&self, uid: &PodUid, disks: Option<PodDisks>, unreadable: Option<Unreadable>) -> PodFact {
        match unreadable {
            None => PodFact { disks, unreadable },
            Some(_) => {
                let before = self.pods.get(uid).and_then(|(_, f)| f.disks.clone());
                PodFact { disks: before.or(disks), unreadable }
            }
        }
    }

    /// Last writer wins: a read older than the one on record changes nothing.
    fn set_pod(&mut self, uid: PodUid, seq: Seq, fact: PodFact) {
        let old = match self.pods.get(&uid) {
            Some((s, _)) if *s > seq => return,
            Some((_, f)) => Some(f.clone()),
            None => None,
        };
        let changed = old.as_ref() != Some(&fact);
        self.pods.insert(uid.clone(), (seq, fact));
        if changed {
            self.reindex(&uid);
            self.changes.pods.insert(uid);
        }
    }

    fn set_device(&mut self, device: DevNum, seq: Seq, value: (bool, Option<DiskId>)) {
        match self.devices.get(&device) {
            Some((s, _)) if *s > seq => return,
            Some((_, v)) if *v == value => {}
            _ => {
                self.changes.devices.insert(device);
            }
        }
        self.devices.insert(device, (seq, value));
    }

    fn set_mounts(&mut self, seq: Seq, mounts: BTreeMap<MountSite, DevNum>) {
        let old = std::mem::replace(&mut self.mounts, (seq, mounts)).1;
        let pods: BTreeSet<PodUid> = merge_diff(&old, &self.mounts.1).into_iter().map(|s| s.pod().clone()).collect();
        for pod in pods {
            self.reindex(&pod);
            self.changes.pods.insert(pod);
        }
    }

    fn set_cluster(&mut self, facts: ClusterFacts) {
        match &self.cluster {
            None => self.changes.everything = true,
            Some(old) => {
                for uid in merge_diff(&old.launchers, &facts.launchers) {
                    self.changes.api_pods.insert(uid.clone());
                }
                for uid in merge_diff(&old.attachment_pods, &facts.attachment_pods) {
                    self.changes.api_pods.insert(uid.clone());
                    // Both the launcher it left and the one it joins are judged again.
                    for a in [old.attachment_pods.get(uid), facts.attachment_pods.get(uid)].into_iter().flatten() {
                        self.changes.api_pods.insert(a.launcher.clone());
                    }
                }
            }
        }
        self.owned.clear();
        for (uid, a) in &facts.attachment_pods {
            self.owned.entry(a.launcher.clone()).or_default().insert(uid.clone());
        }
        self.cluster = Some(facts);
    }

    fn apply_full_scan(&mut self, scan: FullScan) {
        let w = scan.seq;
        if w < self.watermark {
            return;
        }
        if self.watermark == 0 {
            self.changes.everything = true;
        }
        self.watermark = w;
        // Facts read after the scan started stay; everything else is what the scan saw.
        let unreadable: BTreeMap<PodUid, PodFact> = scan
            .unreadable
            .into_iter()
            .map(|(uid, (disks, errno))| {
                let fact = self.pod_fact(&uid, disks, Some(errno));
                (uid, fact)
            })
            .collect();
        let old_pods = std::mem::take(&mut self.pods);
        self.pods = old_pods.iter().filter(|(_, (seq, _))| *seq > w).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (uid, disks) in scan.pods {
            lww(&mut self.pods, uid, w, PodFact { disks: Some(disks), unreadable: None });
        }
        for (uid, fact) in unreadable {
            lww(&mut self.pods, uid, w, fact);
        }
        // What a pod's reads say, not when they were read.
        for uid in changed_keys(old_pods.iter(), self.pods.iter(), |a, b| a.1 == b.1) {
            self.changes.pods.insert(uid.clone());
        }

        let old_devices = std::mem::take(&mut self.devices);
        self.devices = old_devices.iter().filter(|(_, (seq, _))| *seq > w).map(|(k, v)| (*k, v.clone())).collect();
        for dev in scan.devices {
            let identity = scan.identities.get(&dev).cloned();
            lww(&mut self.devices, dev, w, (true, identity));
        }
        for dev in changed_keys(old_devices.iter(), self.devices.iter(), |a, b| a.1 == b.1) {
            self.changes.devices.insert(*dev);
        }

        if self.mounts.0 <= w {
            let old = std::mem::replace(&mut self.mounts, (w, scan.mounts)).1;
            for site in merge_diff(&old, &self.mounts.1) {
                self.changes.pods.insert(site.pod().clone());
            }
        }
        self.rebuild_users();
    }

    fn rebuild_users(&mut self) {
        self.users.clear();
        self.uses.clear();
        let pods: BTreeSet<PodUid> =
            self.pods.keys().cloned().chain(self.mounts.1.keys().map(|s| s.pod().clone())).collect();
        for pod in pods {
            self.reindex(&pod);
        }
    }

    /// Brings `users` in line with what `pod`'s nodes and mounts point at now.
    fn reindex(&mut self, pod: &PodUid) {
        let from_dir = self.pods.get(pod).and_then(|(_, f)| f.disks.as_ref()).map(|d| d.devices()).unwrap_or_default();
        let now: BTreeSet<DevNum> = from_dir.into_iter().chain(self.pod_mount_devices(pod)).collect();
        let before = self.uses.remove(pod).unwrap_or_default();
        for d in before.difference(&now) {
            if let Some(users) = self.users.get_mut(d) {
                users.remove(pod);
                if users.is_empty() {
                    self.users.remove(d);
                }
            }
        }
        for d in now.difference(&before) {
            self.users.entry(*d).or_default().insert(pod.clone());
        }
        if !now.is_empty() {
            self.uses.insert(pod.clone(), now);
        }
    }

    /// Every device mounted at a site of `pod` (its image mounts and its own volumes).
    fn pod_mount_devices(&self, pod: &PodUid) -> Vec<DevNum> {
        let from = MountSite::LauncherImage { pod: pod.clone(), volume: String::new() };
        let images = self.mounts.1.range(from..).map_while(|(site, d)| match site {
            MountSite::LauncherImage { pod: p, .. } if p == pod => Some(*d),
            _ => None,
        });
        images.chain(self.pod_mounts(pod).map(|(_, d)| d)).collect()
    }

    /// The pods whose nodes or mounts point at `dev`.
    pub fn users_of(&self, dev: DevNum) -> impl Iterator<Item = &PodUid> {
        self.users.get(&dev).into_iter().flatten()
    }

    pub fn has_full_scan(&self) -> bool {
        self.watermark > 0
    }

    /// Every pod the agent has a fact about: read, or failed to read.
    pub fn pod_facts(&self) -> impl Iterator<Item = (&PodUid, &PodFact)> {
        self.pods.iter().map(|(uid, (_, f))| (uid, f)).filter(|(_, f)| f.has_something())
    }

    /// The fact about one pod, if there is something to judge.
    pub fn pod_fact_of(&self, uid: &str) -> Option<&PodFact> {
        self.pods.get(uid).map(|(_, f)| f).filter(|f| f.has_something())
    }

    /// The pod has no hotplug-disks directory on the node, as far as a full scan and
    /// every read since can tell: nothing of it can be in use.
    pub fn pod_gone(&self, uid: &str) -> bool {
        self.has_full_scan() && self.pod_fact_of(uid).is_none()
    }

    pub fn set_mount_view_mismatch(&mut self, mismatch: bool) {
        if mismatch != self.mount_view_mismatch {
            self.changes.everything = true;
        }
        self.mount_view_mismatch = mismatch;
    }

    pub fn mount_view_mismatch(&self) -> bool {
        self.mount_view_mismatch
    }

    /// What the API says (cluster mode, once the watches synced).
    pub fn cluster(&self) -> Option<&ClusterFacts> {
        self.cluster.as_ref()
    }

    /// Present unless a scan or uevent said otherwise. Anonymous devices (major 0, NFS and
    /// friends) have no sysfs entry and count as present while mounted.
    pub fn device_present(&self, dev: DevNum) -> bool {
        dev.is_anonymous() || self.devices.get(&dev).is_some_and(|(_, (present, _))| *present)
    }

    /// The identity of the disk behind `dev` now, when known.
    pub fn identity(&self, dev: DevNum) -> Option<&DiskId> {
        self.devices.get(&dev).filter(|(_, (present, _))| *present).and_then(|(_, (_, id))| id.as_ref())
    }

    pub fn mounts(&self) -> &BTreeMap<MountSite, DevNum> {
        &self.mounts.1
    }

    /// What is mounted on a launcher's `<volume>.img`.
    pub fn image_mount(&self, launcher: &PodUid, volume: &str) -> Option<DevNum> {
        let site = MountSite::LauncherImage { pod: launcher.clone(), volume: volume.to_string() };
        self.mounts.1.get(&site).copied()
    }

    /// A pod's own volume mounts (an attachment pod's PVC), by path under its volumes
    /// directory: a range of the ordered table, not a walk of all of it.
    pub fn pod_mounts<'a>(&'a self, pod: &PodUid) -> impl Iterator<Item = (&'a String, DevNum)> + 'a {
        let from = MountSite::PodVolume { pod: pod.clone(), path: String::new() };
        let pod = pod.clone();
        self.mounts.1.range(from..).map_while(move |(site, d)| match site {
            MountSite::PodVolume { pod: p, path } if *p == pod => Some((path, *d)),
            _ => None,
        })
    }

    /// The attachment pods the API says `launcher` owns (cluster mode).
    pub fn attachments_of<'a>(&'a self, launcher: &PodUid) -> impl Iterator<Item = &'a PodUid> + 'a {
        self.owned.get(launcher).into_iter().flatten()
    }

    /// The launcher pod an attachment pod works for, as the API says (cluster mode).
    pub fn owner_of(&self, attachment: &str) -> Option<&PodUid> {
        self.cluster.as_ref()?.attachment_pods.get(attachment).map(|a| &a.launcher)
    }

    /// When the attachment pod was created (cluster mode), in the API server's whole
    /// seconds.
    pub fn created(&self, pod: &str) -> Option<i64> {
        self.cluster.as_ref()?.attachment_pods.get(pod).map(|a| a.created)
    }

    pub fn age_known(&self, pod: &str) -> bool {
        self.created(pod).is_some()
    }

    /// Whether the launcher's VMI still has this volume in its spec; `None` when unknown
    /// (standalone mode, or the VMI is not known).
    pub fn in_spec(&self, launcher: &str, volume: &str) -> Option<bool> {
        let spec = self.cluster.as_ref()?.launchers.get(launcher)?.spec_volumes.as_ref()?;
        Some(spec.contains(volume))
    }
}

impl PodFact {
    /// Read (in part or whole), or failed to read: something to judge.
    fn has_something(&self) -> bool {
        self.disks.is_some() || self.unreadable.is_some()
    }
}

fn lww<K: Ord, V>(map: &mut BTreeMap<K, (Seq, V)>, key: K, seq: Seq, value: V) {
    match map.get(&key) {
        Some((old, _)) if *old > seq => {}
        _ => {
            map.insert(key, (seq, value));
        }
    }
}

/// The keys whose values differ between two maps (present in one only, or unequal).
fn merge_diff<'a, K: Ord, V: PartialEq>(a: &'a BTreeMap<K, V>, b: &'a BTreeMap<K, V>) -> Vec<&'a K> {
    changed_keys(a.iter(), b.iter(), V::eq)
}

/// The keys of two key-ordered sequences whose values differ: present in one only, or not
/// `same`.
fn changed_keys<'a, K: Ord + 'a, V: 'a>(
    a: impl Iterator<Item = (&'a K, &'a V)>,
    b: impl Iterator<Item = (&'a K, &'a V)>,
    same: impl Fn(&V, &V) -> bool,
) -> Vec<&'a K> {
    merge_join(a, b)
        .filter(|(_, x, y)| !matches!((x, y), (Some(x), Some(y)) if same(x, y)))
        .map(|(k, _, _)| k)
        .collect()
}

/// Walks two key-ordered sequences together (every map here iterates in key order): each
/// key once, with its value on each side.
pub(crate) fn merge_join<'a, K: Ord + 'a, V: 'a>(
    a: impl Iterator<Item = (&'a K, &'a V)>,
    b: impl Iterator<Item = (&'a K, &'a V)>,
) -> impl Iterator<Item = (&'a K, Option<&'a V>, Option<&'a V>)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        Some(match order {
            std::cmp::Ordering::Less => a.next().map(|(k, v)| (k, Some(v), None))?,
            std::cmp::Ordering::Greater => b.next().map(|(k, v)| (k, None, Some(v)))?,
            std::cmp::Ordering::Equal => {
                let ((k, va), (_, vb)) = (a.next()?, b.next()?);
                (k, Some(va), Some(vb))
            }
        })
    })
}
