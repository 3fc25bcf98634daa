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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Latest read of each pod; `disks: None` records that a pod has no hotplug directory
    /// so that an older read cannot bring it back. Cleared of such entries at each full scan.
    pods: BTreeMap<PodUid, (Seq, PodFact)>,
    devices: BTreeMap<DevNum, (Seq, (bool, Option<DiskId>))>,
    /// The disk each volume's node reached when first seen present: learned, so lost on restart
    /// (then learned again), and the one fact here that no read can rebuild.
    /// By launcher pod, then volume: looked up for every volume on every batch, without
    /// building a key.
    remembered: BTreeMap<PodUid, BTreeMap<String, (DevNum, DiskId)>>,
    mounts: (Seq, BTreeMap<MountSite, DevNum>),
    /// `None`: standalone mode, or cluster mode before the watches first synced: roles
    /// are inferred from directories (a diagnostic, never a source of safety).
    cluster: Option<ClusterFacts>,
    /// The mount table does not show the kubelet root the agent reads (checked with every
    /// full scan): filesystem volumes cannot be seen, and no handoff is judged safe.
    mount_view_mismatch: bool,
    /// `Seq` of the latest full scan applied; 0 before the first.
    watermark: Seq,
}

impl Inventory {
    pub fn apply(&mut self, obs: Observation) {
        match obs {
            Observation::Pod { seq, uid, disks, unreadable } => {
                if seq >= self.watermark {
                    let fact = self.pod_fact(&uid, disks, unreadable);
                    lww(&mut self.pods, uid, seq, fact);
                }
            }
            Observation::Device { seq, device, present, identity } => {
                if seq >= self.watermark {
                    lww(&mut self.devices, device, seq, (present, identity));
                }
            }
            Observation::Mounts { seq, mounts } => {
                if seq >= self.watermark && seq >= self.mounts.0 {
                    self.mounts = (seq, mounts);
                }
            }
            Observation::FullScan(scan) => self.apply_full_scan(scan),
            // The watches deliver whole, consistent stores: nothing to order.
            Observation::Cluster(facts) => self.cluster = Some(facts),
        }
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

    fn apply_full_scan(&mut self, scan: FullScan) {
        let w = scan.seq;
        if w < self.watermark {
            return;
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
        self.pods.retain(|_, (seq, _)| *seq > w);
        for (uid, disks) in scan.pods {
            lww(&mut self.pods, uid, w, PodFact { disks: Some(disks), unreadable: None });
        }
        for (uid, fact) in unreadable {
            lww(&mut self.pods, uid, w, fact);
        }
        self.devices.retain(|_, (seq, _)| *seq > w);
        for dev in scan.devices {
            let identity = scan.identities.get(&dev).cloned();
            lww(&mut self.devices, dev, w, (true, identity));
        }
        if self.mounts.0 <= w {
            self.mounts = (w, scan.mounts);
        }
    }

    pub fn has_full_scan(&self) -> bool {
        self.watermark > 0
    }

    /// Pods with a hotplug-disks directory, as last read (an unreadable pod keeps its
    /// last complete read).
    pub fn pods(&self) -> impl Iterator<Item = (&PodUid, &PodDisks)> {
        self.pods.iter().filter_map(|(uid, (_, f))| f.disks.as_ref().map(|d| (uid, d)))
    }

    /// Every pod the agent has a fact about: read, or failed to read.
    pub fn pod_facts(&self) -> impl Iterator<Item = (&PodUid, &PodFact)> {
        self.pods.iter().map(|(uid, (_, f))| (uid, f)).filter(|(_, f)| f.disks.is_some() || f.unreadable.is_some())
    }

    /// The pod has no hotplug-disks directory on the node, as far as a full scan and
    /// every read since can tell: nothing of it can be in use.
    pub fn pod_gone(&self, uid: &str) -> bool {
        self.has_full_scan() && self.pods.get(uid).is_none_or(|(_, f)| f.disks.is_none() && f.unreadable.is_none())
    }

    pub fn set_mount_view_mismatch(&mut self, mismatch: bool) {
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

    /// The disk a volume had when first seen ready, if it still uses that device number.
    pub fn remembered(&self, launcher: &str, volume: &str, dev: DevNum) -> Option<&DiskId> {
        self.remembered.get(launcher)?.get(volume).filter(|(d, _)| *d == dev).map(|(_, id)| id)
    }

    /// Learns, for each volume whose device the VM uses now (launcher, volume, device),
    /// which disk it has, unless it is known already for that device number.
    pub fn learn_disks<'a>(&mut self, in_use: impl IntoIterator<Item = (&'a str, &'a str, DevNum)>) {
        for (launcher, volume, dev) in in_use {
            if self.remembered(launcher, volume, dev).is_some() {
                continue;
            }
            let Some(id) = self.identity(dev).cloned() else { continue };
            self.remembered.entry(launcher.into()).or_default().insert(volume.to_string(), (dev, id));
        }
    }

    /// Forgets the disks of volumes that are gone.
    pub fn forget_disks<'a>(&mut self, gone: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (launcher, volume) in gone {
            if let Some(volumes) = self.remembered.get_mut(launcher) {
                volumes.remove(volume);
                if volumes.is_empty() {
                    self.remembered.remove(launcher);
                }
            }
        }
    }

    pub fn mounts(&self) -> &BTreeMap<MountSite, DevNum> {
        &self.mounts.1
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

fn lww<K: Ord, V>(map: &mut BTreeMap<K, (Seq, V)>, key: K, seq: Seq, value: V) {
    match map.get(&key) {
        Some((old, _)) if *old > seq => {}
        _ => {
            map.insert(key, (seq, value));
        }
    }
}
