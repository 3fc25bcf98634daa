//! Unit and property tests of the deciding logic. No I/O: the world is a model.

use std::collections::{BTreeMap, BTreeSet};

use nix::errno::Errno;
use proptest::prelude::*;

use super::*;
use crate::cluster::conditions::{self, Desired};
use crate::inventory::{ApiAttachment, ApiLauncher, ClusterFacts, DiskId, Finished, FullScan, Observation, Seq};
use crate::layout::Unreadable;
use crate::model::MountSite;

const L1: &str = "launcher-1";
const L2: &str = "launcher-2";
const A1: &str = "attach-old";
const A2: &str = "attach-new";

fn d(minor: u32) -> DevNum {
    DevNum::new(7, minor)
}

/// A node as it really is; `scan` is what a full rescan reads of it.
#[derive(Clone, Debug, Default)]
struct World {
    pods: BTreeMap<PodUid, PodDisks>,
    devices: BTreeSet<DevNum>,
    identities: BTreeMap<DevNum, DiskId>,
    mounts: BTreeMap<MountSite, DevNum>,
}

impl World {
    fn launcher(mut self, uid: &str, entries: &[(&str, LauncherEntry)]) -> Self {
        let e = entries.iter().map(|(n, e)| (n.to_string(), *e)).collect();
        self.pods.insert(uid.into(), PodDisks::Launcher(e));
        self
    }
    fn attachment(mut self, uid: &str, vols: &[(&str, DevNum)]) -> Self {
        let v = vols.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        self.pods.insert(uid.into(), PodDisks::Attachment(v));
        self
    }
    fn devices(mut self, devs: &[DevNum]) -> Self {
        self.devices.extend(devs);
        self
    }
    fn mount(mut self, site: MountSite, dev: DevNum) -> Self {
        self.mounts.insert(site, dev);
        self
    }
    fn scan(&self, seq: Seq) -> FullScan {
        FullScan {
            seq,
            pods: self.pods.clone(),
            devices: self.devices.clone(),
            identities: self.identities.clone(),
            mounts: self.mounts.clone(),
            ..Default::default()
        }
    }
    fn judge(&self) -> Verdicts {
        let mut inv = Inventory::default();
        inv.apply(Observation::FullScan(self.scan(1)));
        judge(&inv)
    }
}

/// What the API says: launchers (with their VMI's spec volumes, when known) and attachment
/// pods (launcher, creation second).
fn api(launchers: &[(&str, Option<&[&str]>)], attachments: &[(&str, &str, i64)]) -> ClusterFacts {
    ClusterFacts {
        launchers: launchers
            .iter()
            .map(|(l, spec)| {
                let spec_volumes = spec.map(|v| v.iter().map(|s| s.to_string()).collect());
                (PodUid::from(*l), ApiLauncher { spec_volumes, finished: None })
            })
            .collect(),
        attachment_pods: attachments
            .iter()
            .map(|(a, l, created)| {
                (PodUid::from(*a), ApiAttachment { launcher: PodUid::from(*l), created: *created, trigger: false })
            })
            .collect(),
    }
}

fn key(l: &str, v: &str) -> VolumeKey {
    VolumeKey { launcher: l.into(), volume: v.into() }
}

fn state(v: &Verdicts, l: &str, vol: &str) -> VolumeState {
    v.volumes.get(&key(l, vol)).unwrap_or_else(|| panic!("no verdict for {l}/{vol}: {v:#?}")).state
}

fn safe(v: &Verdicts, pod: &str) -> bool {
    v.attachment_pods[pod].handoff_safe()
}

#[test]
fn block_volume_goes_pending_then_ready() {
    let w = World::default().launcher(L1, &[]).attachment(A1, &[("disk1", d(1))]).devices(&[d(1)]);
    let v = w.judge();
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Pending);
    assert_eq!(v.volumes[&key(L1, "disk1")].backing_pods, BTreeSet::from([PodUid::from(A1)]));
    assert_eq!(v.volumes[&key(L1, "disk1")].device, None);

    let w = w.launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))]);
    let v = w.judge();
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    assert_eq!(v.volumes[&key(L1, "disk1")].device, Some(d(1)));
    assert!(!safe(&v, A1), "the only pod serving a used device is not safe to delete");
    assert_eq!(v.attachment_pods[A1].launcher.as_deref(), Some(L1));
}

#[test]
fn device_gone_is_vanished_and_unserved_device_is_unbacked() {
    let w = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1))), ("disk2", LauncherEntry::Block(d(2)))])
        .attachment(A1, &[("disk1", d(1))])
        .devices(&[d(2)]);
    let v = w.judge();
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Vanished);
    assert_eq!(state(&v, L1, "disk2"), VolumeState::Unbacked);
    assert!(!VolumeState::Vanished.device_present() && VolumeState::Unbacked.device_present());
}

#[test]
fn swap_with_same_device_is_safe_with_new_device_is_not() {
    let base = World::default().launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))]).devices(&[d(1), d(2)]);

    // Kernel rbd: both attachment pods expose the same device.
    let shared = base.clone().attachment(A1, &[("disk1", d(1))]).attachment(A2, &[("disk1", d(1)), ("disk2", d(2))]);
    let v = shared.judge();
    assert!(safe(&v, A1) && safe(&v, A2));
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    // disk2 is new: the new pod serves it, the launcher has no node yet.
    assert_eq!(state(&v, L1, "disk2"), VolumeState::Pending);

    // nbd: the new pod got a new device for the same volume.
    let fresh = base.attachment(A1, &[("disk1", d(1))]).attachment(A2, &[("disk1", d(3))]).devices(&[d(3)]);
    let v = fresh.judge();
    assert!(!safe(&v, A1), "deleting the old pod would orphan 7:1");
    assert!(safe(&v, A2), "the new pod backs nothing the launcher uses yet");
    assert_eq!(v.attachment_pods[A1].sole_backer_of, BTreeSet::from([key(L1, "disk1")]));

    // The controller deletes the old pod: the launcher's node is now unbacked, and once
    // the storage driver tears the device down, vanished.
    let mut after = fresh.clone();
    after.pods.remove(A1);
    assert_eq!(state(&after.judge(), L1, "disk1"), VolumeState::Unbacked);
    after.devices.remove(&d(1));
    assert_eq!(state(&after.judge(), L1, "disk1"), VolumeState::Vanished);
}

#[test]
fn filesystem_volume_follows_its_mount_and_device() {
    let img = MountSite::LauncherImage { pod: L1.into(), volume: "fs1".into() };
    let pvc = MountSite::PodVolume { pod: A1.into(), path: "kubernetes.io~csi/pv1/mount".into() };
    let base = World::default().launcher(L1, &[("fs1", LauncherEntry::Image)]).attachment(A1, &[]);
    assert_eq!(state(&base.judge(), L1, "fs1"), VolumeState::Pending);

    let mounted = base.clone().mount(img.clone(), d(5)).mount(pvc.clone(), d(5)).devices(&[d(5)]);
    let v = mounted.judge();
    assert_eq!(state(&v, L1, "fs1"), VolumeState::Ready);
    assert_eq!(v.volumes[&key(L1, "fs1")].mode, VolumeMode::Filesystem);
    assert_eq!(v.attachment_pods[A1].volumes, BTreeSet::from(["fs1".to_string()]));
    assert!(!safe(&v, A1));

    let mut gone = mounted.clone();
    gone.devices.clear();
    assert_eq!(state(&gone.judge(), L1, "fs1"), VolumeState::Vanished);

    let mut unmounted = mounted;
    unmounted.mounts.remove(&img);
    assert_eq!(state(&unmounted.judge(), L1, "fs1"), VolumeState::Pending);
}

#[test]
fn anonymous_devices_count_as_present_while_mounted() {
    let img = MountSite::LauncherImage { pod: L1.into(), volume: "nfs".into() };
    let pvc = MountSite::PodVolume { pod: A1.into(), path: "kubernetes.io~nfs/pv".into() };
    let w = World::default()
        .launcher(L1, &[("nfs", LauncherEntry::Image)])
        .attachment(A1, &[])
        .mount(img, DevNum::new(0, 52))
        .mount(pvc, DevNum::new(0, 52));
    assert_eq!(state(&w.judge(), L1, "nfs"), VolumeState::Ready);
}

#[test]
fn owner_is_unknown_with_several_launchers_until_cluster_mode_says() {
    let w = World::default().launcher(L1, &[]).launcher(L2, &[]).attachment(A1, &[("disk1", d(1))]).devices(&[d(1)]);
    let v = w.judge();
    assert_eq!(v.attachment_pods[A1].launcher, None);
    assert!(v.volumes.is_empty(), "no launcher to file the pending volume under: {v:#?}");

    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    inv.apply(Observation::Cluster(api(&[(L1, None), (L2, Some(&["disk1"]))], &[(A1, L2, 100)])));
    let v = judge(&inv);
    assert_eq!(state(&v, L2, "disk1"), VolumeState::Pending);
    assert_eq!(v.volumes[&key(L2, "disk1")].in_spec, Some(true));
}

#[test]
fn a_volume_that_left_the_spec_is_no_alarm() {
    let w = World::default()
        .launcher(L1, &[("kept", LauncherEntry::Block(d(1))), ("unplugged", LauncherEntry::Block(d(2)))])
        .devices(&[]);
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    let standalone = judge(&inv);
    assert!(standalone.volumes.values().all(|v| v.in_spec.is_none() && v.is_alarm()), "unknown spec: alarm");
    inv.apply(Observation::Cluster(api(&[(L1, Some(&["kept"]))], &[])));
    let v = judge(&inv);
    assert_eq!(state(&v, L1, "unplugged"), VolumeState::Vanished);
    assert!(!v.volumes[&key(L1, "unplugged")].is_alarm(), "unplug in progress");
    assert!(v.volumes[&key(L1, "kept")].is_alarm(), "vanished under a running VM");
}

#[test]
fn utility_directories_are_not_judged() {
    let w = World::default().launcher(L1, &[("dump", LauncherEntry::Directory)]);
    assert!(w.judge().volumes.is_empty());
}

#[test]
fn transitions_name_what_changed_and_nothing_else() {
    let before = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment(A1, &[("disk1", d(1))])
        .devices(&[d(1)]);
    let mut after = before.clone();
    after.devices.clear();
    let t = transitions(&before.judge(), &after.judge());
    assert_eq!(
        t.volumes,
        vec![VolumeTransition {
            key: key(L1, "disk1"),
            from: Some(VolumeState::Ready),
            to: Some(VolumeState::Vanished),
            device: Some(d(1)),
        }]
    );
    // The old pod now serves a vanished device alone: still the sole backer, no change.
    assert!(t.handoffs.is_empty());
    assert!(transitions(&after.judge(), &after.judge()).is_empty());
}

#[test]
fn stale_reads_lose_to_newer_ones_and_to_a_rescan() {
    let mut inv = Inventory::default();
    let w = World::default().launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))]).attachment(A1, &[("disk1", d(1))]);
    inv.apply(Observation::FullScan(w.scan(10)));
    // A uevent read before the scan started says the device is there: ignored.
    inv.apply(Observation::Device { seq: 5, device: d(1), present: true, identity: None });
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Vanished);
    // One read after the scan wins; an older one arriving late does not undo it.
    inv.apply(Observation::Device { seq: 12, device: d(1), present: true, identity: None });
    inv.apply(Observation::Device { seq: 11, device: d(1), present: false, identity: None });
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Ready);
    // A scan that started before that uevent keeps it.
    inv.apply(Observation::FullScan(
        World::default()
            .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
            .attachment(A1, &[("disk1", d(1))])
            .scan(11),
    ));
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Ready);
}

// ---- property: any delivery order, lost events before a rescan, same verdicts ----

const LAUNCHERS: [&str; 2] = [L1, L2];
const ATTACHMENTS: [&str; 3] = ["a1", "a2", "a3"];
const VOLUMES: [&str; 3] = ["v1", "v2", "v3"];

#[derive(Clone, Debug)]
enum Change {
    LauncherBlock(usize, usize, u32),
    LauncherImage(usize, usize),
    LauncherRemoveVolume(usize, usize),
    LauncherGone(usize),
    Attachment(usize, Vec<(usize, u32)>),
    AttachmentGone(usize),
    Mount(usize, usize, u32),
    AttachmentMount(usize, u32),
    Unmount(usize, usize),
    DeviceAdd(u32),
    DeviceRemove(u32),
    /// The device is present and its disk has this diskseq (a new disk under the number).
    DeviceDisk(u32, u64),
}

fn change() -> impl Strategy<Value = Change> {
    let (l, a, v, dv) = (0..LAUNCHERS.len(), 0..ATTACHMENTS.len(), 0..VOLUMES.len(), 1u32..5);
    prop_oneof![
        (l.clone(), v.clone(), dv.clone()).prop_map(|(l, v, d)| Change::LauncherBlock(l, v, d)),
        (l.clone(), v.clone()).prop_map(|(l, v)| Change::LauncherImage(l, v)),
        (l.clone(), v.clone()).prop_map(|(l, v)| Change::LauncherRemoveVolume(l, v)),
        l.clone().prop_map(Change::LauncherGone),
        (a.clone(), proptest::collection::vec((v.clone(), dv.clone()), 0..3))
            .prop_map(|(a, vs)| Change::Attachment(a, vs)),
        a.clone().prop_map(Change::AttachmentGone),
        (l.clone(), v.clone(), dv.clone()).prop_map(|(l, v, d)| Change::Mount(l, v, d)),
        (a, dv.clone()).prop_map(|(a, d)| Change::AttachmentMount(a, d)),
        (l, v).prop_map(|(l, v)| Change::Unmount(l, v)),
        dv.clone().prop_map(Change::DeviceAdd),
        dv.clone().prop_map(Change::DeviceRemove),
        (dv, 10u64..13).prop_map(|(d, s)| Change::DeviceDisk(d, s)),
    ]
}

/// What kind of observation a change makes its source send.
enum Touched {
    Pod(PodUid),
    Device(DevNum),
    Mounts,
}

impl World {
    fn launcher_entries(&mut self, l: usize) -> &mut BTreeMap<String, LauncherEntry> {
        let e = self.pods.entry(LAUNCHERS[l].into()).or_insert_with(|| PodDisks::Launcher(BTreeMap::new()));
        match e {
            PodDisks::Launcher(m) => m,
            PodDisks::Attachment(_) => unreachable!("launcher and attachment names are distinct"),
        }
    }

    fn change(&mut self, c: &Change) -> Touched {
        match c {
            Change::LauncherBlock(l, v, dv) => {
                self.launcher_entries(*l).insert(VOLUMES[*v].into(), LauncherEntry::Block(d(*dv)));
                Touched::Pod(LAUNCHERS[*l].into())
            }
            Change::LauncherImage(l, v) => {
                self.launcher_entries(*l).insert(VOLUMES[*v].into(), LauncherEntry::Image);
                Touched::Pod(LAUNCHERS[*l].into())
            }
            Change::LauncherRemoveVolume(l, v) => {
                self.launcher_entries(*l).remove(VOLUMES[*v]);
                Touched::Pod(LAUNCHERS[*l].into())
            }
            Change::LauncherGone(l) => {
                self.pods.remove(LAUNCHERS[*l]);
                Touched::Pod(LAUNCHERS[*l].into())
            }
            Change::Attachment(a, vols) => {
                let m = vols.iter().map(|(v, dv)| (VOLUMES[*v].to_string(), d(*dv))).collect();
                self.pods.insert(ATTACHMENTS[*a].into(), PodDisks::Attachment(m));
                Touched::Pod(ATTACHMENTS[*a].into())
            }
            Change::AttachmentGone(a) => {
                self.pods.remove(ATTACHMENTS[*a]);
                Touched::Pod(ATTACHMENTS[*a].into())
            }
            Change::Mount(l, v, dv) => {
                self.mounts
                    .insert(MountSite::LauncherImage { pod: LAUNCHERS[*l].into(), volume: VOLUMES[*v].into() }, d(*dv));
                Touched::Mounts
            }
            Change::AttachmentMount(a, dv) => {
                self.mounts
                    .insert(MountSite::PodVolume { pod: ATTACHMENTS[*a].into(), path: "csi/pv/mount".into() }, d(*dv));
                Touched::Mounts
            }
            Change::Unmount(l, v) => {
                self.mounts.remove(&MountSite::LauncherImage { pod: LAUNCHERS[*l].into(), volume: VOLUMES[*v].into() });
                Touched::Mounts
            }
            Change::DeviceAdd(dv) => {
                self.devices.insert(d(*dv));
                Touched::Device(d(*dv))
            }
            Change::DeviceRemove(dv) => {
                self.devices.remove(&d(*dv));
                self.identities.remove(&d(*dv));
                Touched::Device(d(*dv))
            }
            Change::DeviceDisk(dv, diskseq) => {
                self.devices.insert(d(*dv));
                self.identities.insert(d(*dv), DiskId::DiskSeq { diskseq: *diskseq, partition: None });
                Touched::Device(d(*dv))
            }
        }
    }

    /// The observation a source sends after `touched` changed: it reads the current state.
    fn observe(&self, touched: Touched, seq: Seq) -> Observation {
        match touched {
            Touched::Pod(uid) => Observation::Pod { seq, disks: self.pods.get(&uid).cloned(), uid, unreadable: None },
            Touched::Device(dev) => Observation::Device {
                seq,
                device: dev,
                present: self.devices.contains(&dev),
                identity: self.identities.get(&dev).cloned(),
            },
            Touched::Mounts => Observation::Mounts { seq, mounts: self.mounts.clone() },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Changes happen; each makes its source read and send an observation; any of them
    /// before the rescan may be lost; the rescan runs at some point in between; and the
    /// agent receives what survived in any order. The verdicts must equal those computed
    /// from a scan of the final world.
    #[test]
    fn any_order_with_losses_then_rescan_equals_scratch(
        changes in proptest::collection::vec(change(), 0..40),
        rescan_at in 0usize..40,
        lost in proptest::collection::vec(any::<bool>(), 40),
        order in proptest::collection::vec(any::<u32>(), 41),
    ) {
        let mut world = World::default();
        let mut seq: Seq = 0;
        let mut sent: Vec<Observation> = Vec::new();
        let rescan_at = rescan_at.min(changes.len());
        for (i, c) in changes.iter().enumerate() {
            if i == rescan_at {
                seq += 1;
                sent.push(Observation::FullScan(world.scan(seq)));
            }
            let touched = world.change(c);
            seq += 1;
            let obs = world.observe(touched, seq);
            // Lost events are only those the rescan repairs: before it.
            if !(i < rescan_at && lost[i]) {
                sent.push(obs);
            }
        }
        if rescan_at == changes.len() {
            seq += 1;
            sent.push(Observation::FullScan(world.scan(seq)));
        }
        // Deliver in an arbitrary order.
        let mut delivery: Vec<(u32, Observation)> = sent.into_iter().enumerate().map(|(i, o)| (order[i % order.len()].wrapping_add(i as u32), o)).collect();
        delivery.sort_by_key(|(k, _)| *k);
        let mut inv = Inventory::default();
        for (_, obs) in delivery {
            inv.apply(obs);
        }
        prop_assert_eq!(judge(&inv), world.judge());
    }

    /// Handoff safety is exactly "every launcher device this pod serves has another server".
    #[test]
    fn handoff_safe_matches_its_definition(changes in proptest::collection::vec(change(), 0..30)) {
        let mut world = World::default();
        for c in &changes {
            world.change(c);
        }
        let v = world.judge();
        for (pod, att) in &v.attachment_pods {
            let orphaned = v.volumes.values().any(|vol| vol.device.is_some() && vol.backing_pods.len() == 1 && vol.backing_pods.contains(pod));
            // A filesystem volume of its launcher waiting for its mount: who will back it
            // is not known, so nothing is safe (Unknown) until it is mounted.
            let pending_fs = v.volumes.iter().any(|(k, vol)| {
                Some(&k.launcher) == att.launcher.as_ref() && vol.mode == VolumeMode::Filesystem && vol.state == VolumeState::Pending
            });
            prop_assert_eq!(att.handoff_safe(), !orphaned && !pending_fs);
            prop_assert_eq!(att.handoff == HandoffReason::FilesystemVolumePending, pending_fs && att.launcher.is_some());
        }
    }
}

#[test]
fn a_reused_device_number_is_replaced_never_ready() {
    let w = World::default().launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))]).attachment(A1, &[("disk1", d(1))]);
    let mut inv = Inventory::default();
    let mut scan = w.scan(1);
    scan.devices.insert(d(1));
    scan.identities.insert(d(1), DiskId::DiskSeq { diskseq: 10, partition: None });
    inv.apply(Observation::FullScan(scan));
    // Each judgment hands what it learned (the disk) to the next.
    let v = judge(&inv);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    let seq10 = DiskId::DiskSeq { diskseq: 10, partition: None };
    assert_eq!(v.volumes[&key(L1, "disk1")].disk, Some((d(1), seq10.clone())));

    // Same disk seen again: still ready.
    inv.apply(Observation::Device { seq: 2, device: d(1), present: true, identity: Some(seq10.clone()) });
    let v = judge_all(&inv, &v);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    // Torn down and another disk created under the same number.
    inv.apply(Observation::Device { seq: 3, device: d(1), present: false, identity: None });
    let v = judge_all(&inv, &v);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Vanished);
    inv.apply(Observation::Device {
        seq: 4,
        device: d(1),
        present: true,
        identity: Some(DiskId::DiskSeq { diskseq: 11, partition: None }),
    });
    let v = judge_all(&inv, &v);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Replaced);
    assert!(v.volumes[&key(L1, "disk1")].is_alarm() && !VolumeState::Replaced.device_present());
    // Judging again does not learn the new disk over what the volume had.
    let v = judge_all(&inv, &v);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Replaced);
    assert_eq!(v.volumes[&key(L1, "disk1")].disk, Some((d(1), seq10)));
    // A volume that is gone is forgotten: hotplugged again, it starts afresh.
    assert_eq!(state(&judge_all(&inv, &Verdicts::default()), L1, "disk1"), VolumeState::Ready);
}

#[test]
fn two_old_pods_cannot_vouch_for_each_other() {
    // old1 and old2 serve the VM's device 7:1; the current pod got a new device 7:2.
    let w = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment("old1", &[("disk1", d(1))])
        .attachment("old2", &[("disk1", d(1))])
        .attachment("current", &[("disk1", d(2))])
        .devices(&[d(1), d(2)]);
    // Without ages (standalone), each old pod counts the other: both look safe.
    let v = w.judge();
    assert!(safe(&v, "old1") && safe(&v, "old2"));
    // With ages (cluster mode), only the current pod can take over, and it serves another
    // device: KubeVirt would delete both old pods at once, so neither is safe.
    let ages = |old1, old2| api(&[(L1, None)], &[("old1", L1, old1), ("old2", L1, old2), ("current", L1, 300)]);
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    inv.apply(Observation::Cluster(ages(100, 200)));
    let v = judge(&inv);
    assert!(!safe(&v, "old1") && !safe(&v, "old2"));
    assert!(safe(&v, "current"), "the VM uses none of its devices yet");
    inv.apply(Observation::Cluster(ages(100, 100)));
    assert!(!safe(&judge(&inv), "old1") && !safe(&judge(&inv), "old2"), "same second: still neither");

    // The current pod shares the device (kernel rbd): every pod is safe, the current one
    // too (the old ones still serve it).
    let shared = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment("old1", &[("disk1", d(1))])
        .attachment("current", &[("disk1", d(1))])
        .devices(&[d(1)]);
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(shared.scan(1)));
    inv.apply(Observation::Cluster(ages(100, 200)));
    let v = judge(&inv);
    assert!(safe(&v, "old1") && safe(&v, "current"));
}

#[test]
fn only_pods_a_newer_one_replaces_are_superseded() {
    // A swap adding disk2: the current pod holds disk1 on a new device and disk2, which the
    // VM already uses; only the old pod is about to be deleted.
    let w = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1))), ("disk2", LauncherEntry::Block(d(3)))])
        .attachment("old", &[("disk1", d(1))])
        .attachment("current", &[("disk1", d(2)), ("disk2", d(3))])
        .devices(&[d(1), d(2), d(3)]);
    let superseded = |v: &Verdicts, pod: &str| v.attachment_pods[pod].superseded;
    // Without ages (standalone) either pod may be the one to go.
    let v = w.judge();
    assert!(superseded(&v, "old") && superseded(&v, "current"));
    // With ages, only the old one; the current pod being the sole backer of disk2 is normal.
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    inv.apply(Observation::Cluster(api(&[(L1, None)], &[("old", L1, 100), ("current", L1, 200)])));
    let v = judge(&inv);
    assert!(superseded(&v, "old") && !superseded(&v, "current"));
    assert!(!safe(&v, "old") && !safe(&v, "current"));
    assert_eq!(crate::notice::unsafe_handoffs(&v), BTreeSet::from([PodUid::from("old")]));
    // Created in the same second: which one KubeVirt keeps is not known, so both may go.
    inv.apply(Observation::Cluster(api(&[(L1, None)], &[("old", L1, 100), ("current", L1, 100)])));
    let v = judge(&inv);
    assert!(superseded(&v, "old") && superseded(&v, "current"));
    assert_eq!(crate::notice::unsafe_handoffs(&v), BTreeSet::from([PodUid::from("current"), PodUid::from("old")]));
    // A lone pod is never superseded.
    let lone = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment("old", &[("disk1", d(1))])
        .devices(&[d(1)]);
    assert!(!superseded(&lone.judge(), "old"));
}

fn handoff_of(v: &Verdicts, pod: &str) -> HandoffReason {
    v.attachment_pods.get(pod).unwrap_or_else(|| panic!("no verdict for {pod}: {v:#?}")).handoff
}

/// A VM whose disk1 (7:1) only its attachment pod A1 serves.
fn victim() -> World {
    World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment(A1, &[("disk1", d(1))])
        .devices(&[d(1)])
}

fn cluster_judge(w: &World, facts: ClusterFacts) -> Verdicts {
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    inv.apply(Observation::Cluster(facts));
    judge(&inv)
}

#[test]
fn an_intruder_directory_never_vouches_in_cluster_mode() {
    // Any pod can make a directory that looks like an attachment pod serving the victim's
    // device (an emptyDir named hotplug-disks, hp.sock, mknod with the same number).
    let w = victim().attachment("intruder", &[("disk1", d(1))]);
    // Standalone mode infers from directories: the intruder vouches (a diagnostic only).
    assert_eq!(handoff_of(&w.judge(), A1), HandoffReason::DevicesServedElsewhere);
    // Cluster mode: the API does not confirm the intruder's UID; it decides nothing.
    let v = cluster_judge(&w, api(&[(L1, Some(&["disk1"]))], &[(A1, L1, 100)]));
    assert_eq!(handoff_of(&v, A1), HandoffReason::SoleBacker);
    assert_eq!(v.unconfirmed.iter().cloned().collect::<BTreeSet<_>>(), BTreeSet::from([PodUid::from("intruder")]));
    assert!(!v.attachment_pods.contains_key("intruder"));
    assert_eq!(v.volumes[&key(L1, "disk1")].backing_pods, BTreeSet::from([PodUid::from(A1)]));
    // Confirmed as another VM's attachment pod (its own launcher, even a newer pod): it
    // still backs nothing of this VM.
    let w = w.launcher(L2, &[]);
    let v = cluster_judge(&w, api(&[(L1, Some(&["disk1"])), (L2, None)], &[(A1, L1, 100), ("intruder", L2, 200)]));
    assert_eq!(handoff_of(&v, A1), HandoffReason::SoleBacker);
    assert_eq!(v.volumes[&key(L1, "disk1")].backing_pods, BTreeSet::from([PodUid::from(A1)]));
    // A launcher directory the API does not confirm claims no volume either.
    let w = victim().launcher("fake-launcher", &[("x", LauncherEntry::Block(d(1)))]);
    let v = cluster_judge(&w, api(&[(L1, Some(&["disk1"]))], &[(A1, L1, 100)]));
    assert!(v.volumes.keys().all(|k| k.launcher == L1), "{v:#?}");
    assert!(v.unconfirmed.contains("fake-launcher"));
}

#[test]
fn a_launcher_the_api_does_not_confirm_leaves_its_pods_unknown() {
    let v = cluster_judge(&victim(), api(&[], &[(A1, L1, 100)]));
    assert_eq!(handoff_of(&v, A1), HandoffReason::LauncherNotConfirmed);
    assert!(!v.attachment_pods[A1].handoff_safe());
    assert!(v.volumes.is_empty(), "an unconfirmed launcher's volumes are not judged");
}

#[test]
fn unreadable_directories_keep_what_was_read_and_are_unknown() {
    let facts = api(&[(L1, Some(&["disk1"]))], &[(A1, L1, 100)]);
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(victim().scan(1)));
    inv.apply(Observation::Cluster(facts));
    assert_eq!(handoff_of(&judge(&inv), A1), HandoffReason::SoleBacker);
    // The attachment pod's directory turns unreadable (EACCES, EMFILE, EIO): its volumes are
    // not forgotten, and it is not judged safe.
    inv.apply(Observation::Pod {
        seq: 2,
        uid: A1.into(),
        disks: None,
        unreadable: Some(Unreadable::Error(Errno::EMFILE)),
    });
    let v = judge(&inv);
    assert_eq!(handoff_of(&v, A1), HandoffReason::DirectoryUnreadable);
    assert_eq!(v.attachment_pods[A1].volumes, BTreeSet::from(["disk1".to_string()]));
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    // Readable again: judged again.
    inv.apply(Observation::Pod { seq: 3, uid: A1.into(), disks: victim().pods.get(A1).cloned(), unreadable: None });
    assert_eq!(handoff_of(&judge(&inv), A1), HandoffReason::SoleBacker);
    // The launcher's directory turns unreadable, even partly (an empty partial read):
    // what the VM uses is not known; its volumes stay as last read.
    let partial = Some(PodDisks::Launcher(BTreeMap::new()));
    inv.apply(Observation::Pod {
        seq: 4,
        uid: L1.into(),
        disks: partial,
        unreadable: Some(Unreadable::Error(Errno::EACCES)),
    });
    let v = judge(&inv);
    assert_eq!(handoff_of(&v, A1), HandoffReason::LauncherUnreadable);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
    // A full scan that cannot read the launcher keeps it too.
    let mut scan = victim().scan(5);
    scan.pods.remove(L1);
    scan.unreadable.insert(L1.into(), (None, Unreadable::Error(Errno::EIO)));
    inv.apply(Observation::FullScan(scan));
    let v = judge(&inv);
    assert_eq!(handoff_of(&v, A1), HandoffReason::LauncherUnreadable);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Ready);
}

#[test]
fn doubts_about_filesystem_volumes_are_unknown() {
    // disk1 is served and in use; fs1's image is there, its mount not yet.
    let w = victim()
        .attachment(A2, &[("disk1", d(1))])
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1))), ("fs1", LauncherEntry::Image)]);
    let facts = api(&[(L1, Some(&["disk1", "fs1"]))], &[(A1, L1, 100), (A2, L1, 200)]);
    let v = cluster_judge(&w, facts.clone());
    assert_eq!(handoff_of(&v, A1), HandoffReason::FilesystemVolumePending);
    // Mounted: judged by devices again (A2 serves disk1 too; fs1's mount is backed by A2).
    let w = w
        .mount(MountSite::LauncherImage { pod: L1.into(), volume: "fs1".into() }, d(5))
        .mount(MountSite::PodVolume { pod: A2.into(), path: "kubernetes.io~csi/pv/mount".into() }, d(5))
        .devices(&[d(5)]);
    let v = cluster_judge(&w, facts.clone());
    assert_eq!(handoff_of(&v, A1), HandoffReason::DevicesServedElsewhere);
    assert_eq!(handoff_of(&v, A2), HandoffReason::SoleBacker);
    // The mount table does not show the kubelet root: no mount can be seen, nothing safe.
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(w.scan(1)));
    inv.apply(Observation::Cluster(facts));
    inv.set_mount_view_mismatch(true);
    assert_eq!(handoff_of(&judge(&inv), A1), HandoffReason::MountTableMismatch);
}

#[test]
fn nothing_left_to_protect_is_safe_at_once() {
    let facts = api(&[(L1, Some(&["disk1"]))], &[(A1, L1, 100)]);
    for (finished, reason) in
        [(Finished::VmiFinal, HandoffReason::VmiFinal), (Finished::LauncherDone, HandoffReason::LauncherGone)]
    {
        let mut f = facts.clone();
        f.launchers.get_mut(L1).unwrap().finished = Some(finished);
        assert_eq!(handoff_of(&cluster_judge(&victim(), f), A1), reason);
    }
    // The launcher's hotplug directory is gone from the node (its pod ended).
    let mut gone = victim();
    gone.pods.remove(L1);
    assert_eq!(handoff_of(&cluster_judge(&gone, facts.clone()), A1), HandoffReason::LauncherGone);
    // ... even when the API no longer shows the launcher.
    assert_eq!(handoff_of(&cluster_judge(&gone, api(&[], &[(A1, L1, 100)])), A1), HandoffReason::LauncherGone);
    // A WaitForFirstConsumer trigger pod serves no VM.
    let mut f = facts.clone();
    f.attachment_pods.get_mut(A1).unwrap().trigger = true;
    assert_eq!(handoff_of(&cluster_judge(&victim(), f), A1), HandoffReason::TriggerPod);
    // The volume unplugged and its node removed from the launcher: nothing in use.
    let mut unplugged = victim();
    unplugged.pods.insert(L1.into(), PodDisks::Launcher(BTreeMap::new()));
    assert_eq!(
        handoff_of(&cluster_judge(&unplugged, api(&[(L1, Some(&[]))], &[(A1, L1, 100)])), A1),
        HandoffReason::NoDeviceInUse
    );
}

#[test]
fn three_pods_of_one_second_never_vouch_for_one_another() {
    // KubeVirt keeps one of the pods created in the newest second and deletes the others.
    // b and c share the VM's device 7:1, a has a new one: if a stays, b and c both go.
    let w = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment("a", &[("disk1", d(2))])
        .attachment("b", &[("disk1", d(1))])
        .attachment("c", &[("disk1", d(1))])
        .devices(&[d(1), d(2)]);
    let facts = api(&[(L1, Some(&["disk1"]))], &[("a", L1, 100), ("b", L1, 100), ("c", L1, 100)]);
    let v = cluster_judge(&w, facts.clone());
    assert_eq!(handoff_of(&v, "b"), HandoffReason::SoleBacker);
    assert_eq!(handoff_of(&v, "c"), HandoffReason::SoleBacker);
    assert_eq!(handoff_of(&v, "a"), HandoffReason::NoDeviceInUse);
    // An older pod sharing the device with only some of them is not safe either.
    let w = w.attachment("old", &[("disk1", d(1))]);
    let mut f = facts.clone();
    f.attachment_pods.insert("old".into(), ApiAttachment { launcher: L1.into(), created: 50, trigger: false });
    assert_eq!(handoff_of(&cluster_judge(&w, f.clone()), "old"), HandoffReason::SoleBacker);
    // Whichever one stays serves the device when all of them share it.
    let shared = w.attachment("a", &[("disk1", d(1))]);
    let v = cluster_judge(&shared, f);
    for pod in ["a", "b", "c", "old"] {
        assert_eq!(handoff_of(&v, pod), HandoffReason::DevicesServedElsewhere, "{pod}");
    }
}

#[test]
fn a_volume_being_unplugged_makes_no_pod_a_sole_backer() {
    // disk2 left the spec (its node is still in the launcher); the new pod holds disk1 only,
    // on the same device. Deleting the old pod loses nothing the VM keeps.
    let w = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1))), ("disk2", LauncherEntry::Block(d(2)))])
        .attachment("old", &[("disk1", d(1)), ("disk2", d(2))])
        .attachment("current", &[("disk1", d(1))])
        .devices(&[d(1), d(2)]);
    let v = cluster_judge(&w, api(&[(L1, Some(&["disk1"]))], &[("old", L1, 100), ("current", L1, 200)]));
    assert_eq!(handoff_of(&v, "old"), HandoffReason::DevicesServedElsewhere);
    assert!(v.attachment_pods["old"].sole_backer_of.is_empty());
    assert!(crate::notice::unsafe_handoffs(&v).is_empty(), "no HotplugHandoffUnsafe on a partial unplug");
}

// ---- property: incremental judging equals judging from scratch ----

/// What the API says about the property test's pods: each launcher confirmed or not (with
/// a spec of some volumes, maybe finished), each attachment pod owned by some launcher.
fn api_facts() -> impl Strategy<Value = ClusterFacts> {
    let launcher = proptest::option::of((proptest::collection::btree_set(0..VOLUMES.len(), 0..3), 0u8..3));
    let attachment = proptest::option::of((0..LAUNCHERS.len() + 1, 0i64..3, proptest::bool::weighted(0.1)));
    (proptest::collection::vec(launcher, LAUNCHERS.len()), proptest::collection::vec(attachment, ATTACHMENTS.len()))
        .prop_map(|(ls, atts)| {
            let mut facts = ClusterFacts::default();
            for (i, l) in ls.into_iter().enumerate() {
                let Some((spec, finished)) = l else { continue };
                let finished = [None, Some(Finished::VmiFinal), Some(Finished::LauncherDone)][usize::from(finished)];
                let spec_volumes = Some(spec.into_iter().map(|v| VOLUMES[v].to_string()).collect());
                facts.launchers.insert(LAUNCHERS[i].into(), ApiLauncher { spec_volumes, finished });
            }
            for (i, a) in atts.into_iter().enumerate() {
                let Some((owner, created, trigger)) = a else { continue };
                // One owner past the launchers: a launcher the API does not list.
                let launcher = LAUNCHERS.get(owner).copied().unwrap_or("launcher-unlisted").into();
                facts.attachment_pods.insert(ATTACHMENTS[i].into(), ApiAttachment { launcher, created, trigger });
            }
            facts
        })
}

#[derive(Clone, Debug)]
enum Step {
    Node(Change),
    Api(ClusterFacts),
    Rescan,
    MountView(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => change().prop_map(Step::Node),
        2 => api_facts().prop_map(Step::Api),
        1 => Just(Step::Rescan),
        1 => any::<bool>().prop_map(Step::MountView),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// After every batch, the verdicts judged incrementally (only what the batch touched)
    /// equal the verdicts judged from scratch with the same history, and so do the
    /// transitions reported; in cluster mode (`api` given) and standalone.
    #[test]
    fn incremental_judging_equals_judging_from_scratch(
        api in proptest::option::of(api_facts()),
        steps in proptest::collection::vec(proptest::collection::vec(step(), 1..4), 0..25),
    ) {
        let mut world = World::default();
        let mut inv = Inventory::default();
        let mut seq: Seq = 1;
        inv.apply(Observation::FullScan(world.scan(seq)));
        if let Some(facts) = &api {
            inv.apply(Observation::Cluster(facts.clone()));
        }
        let (mut incremental, mut scratch) = (Verdicts::default(), Verdicts::default());
        // The condition writers' view of the attachment pods: every one, on the node or not.
        let api_pods: BTreeMap<PodUid, String> = ATTACHMENTS.iter().map(|p| (PodUid::from(*p), p.to_string())).collect();
        let mut decided: Option<(Verdicts, BTreeMap<PodUid, Vec<Desired>>)> = None;
        for batch in steps.iter().map(Some).chain([None]) {
            for s in batch.into_iter().flatten() {
                seq += 1;
                match s {
                    Step::Node(c) => {
                        let touched = world.change(c);
                        inv.apply(world.observe(touched, seq));
                    }
                    // Standalone mode never hears from the API.
                    Step::Api(facts) if api.is_some() => inv.apply(Observation::Cluster(facts.clone())),
                    Step::Api(_) => {}
                    Step::Rescan => inv.apply(Observation::FullScan(world.scan(seq))),
                    Step::MountView(mismatch) => inv.set_mount_view_mismatch(*mismatch),
                }
            }
            let changes = inv.take_changes();
            let next = judge_all(&inv, &scratch);
            // `None` (nothing changed) is held to that by the check below.
            if let Some((v, t)) = rejudge(&incremental, &inv, &changes) {
                let mut want = transitions(&incremental, &v);
                let mut got = t;
                for t in [&mut want, &mut got] {
                    t.attachment_pods.sort();
                    t.handoffs.sort_by(|a, b| a.pod.cmp(&b.pod));
                }
                prop_assert_eq!(got, want);
                incremental = v;
            }
            prop_assert_eq!(&incremental, &next);
            scratch = next;
            // The writers decide again only what the new verdicts can change; that equals
            // deciding every pod from scratch, and names exactly the pods that changed.
            let want = conditions::desired(&incremental, &api_pods);
            decided = match (decided.take(), want) {
                (Some((old, mut got)), Some(want)) => {
                    let before = got.clone();
                    let mut changed = conditions::redecide(&old, &incremental, &mut got);
                    changed.sort();
                    let differ: Vec<PodUid> = want.iter().filter(|(p, w)| before[*p] != **w).map(|(p, _)| p.clone()).collect();
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(changed, differ);
                    Some((incremental.clone(), got))
                }
                (None, Some(want)) => Some((incremental.clone(), want)),
                (_, None) => None,
            };
        }
    }
}
