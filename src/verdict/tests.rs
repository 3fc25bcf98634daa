//! Unit and property tests of the deciding logic. No I/O: the world is a model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::inventory::{ClusterFacts, FullScan, Observation, Seq};

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
    assert_eq!(v.volumes[&key(L1, "disk1")].backing_pods, BTreeSet::from([A1.to_string()]));
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
    inv.apply(Observation::Cluster(ClusterFacts {
        owners: BTreeMap::from([(A1.to_string(), L2.to_string())]),
        spec_volumes: BTreeMap::from([(L2.to_string(), BTreeSet::from(["disk1".to_string()]))]),
        ..Default::default()
    }));
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
    inv.apply(Observation::Cluster(ClusterFacts {
        owners: BTreeMap::new(),
        spec_volumes: BTreeMap::from([(L1.to_string(), BTreeSet::from(["kept".to_string()]))]),
        ..Default::default()
    }));
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
        dv.prop_map(Change::DeviceRemove),
    ]
}

/// What kind of observation a change makes its source send.
enum Touched {
    Pod(String),
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
                Touched::Device(d(*dv))
            }
        }
    }

    /// The observation a source sends after `touched` changed: it reads the current state.
    fn observe(&self, touched: Touched, seq: Seq) -> Observation {
        match touched {
            Touched::Pod(uid) => Observation::Pod { seq, disks: self.pods.get(&uid).cloned(), uid },
            Touched::Device(dev) => {
                Observation::Device { seq, device: dev, present: self.devices.contains(&dev), identity: None }
            }
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
            prop_assert_eq!(att.handoff_safe(), !orphaned);
        }
    }
}

#[test]
fn a_reused_device_number_is_replaced_never_ready() {
    let w = World::default().launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))]).attachment(A1, &[("disk1", d(1))]);
    let mut inv = Inventory::default();
    let mut scan = w.scan(1);
    scan.devices.insert(d(1));
    scan.identities.insert(d(1), "diskseq:10".into());
    inv.apply(Observation::FullScan(scan));
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Ready);
    inv.learn_disks([(L1, "disk1", d(1))]);

    // Same disk seen again: still ready.
    inv.apply(Observation::Device { seq: 2, device: d(1), present: true, identity: Some("diskseq:10".into()) });
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Ready);
    // Torn down and another disk created under the same number.
    inv.apply(Observation::Device { seq: 3, device: d(1), present: false, identity: None });
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Vanished);
    inv.apply(Observation::Device { seq: 4, device: d(1), present: true, identity: Some("diskseq:11".into()) });
    let v = judge(&inv);
    assert_eq!(state(&v, L1, "disk1"), VolumeState::Replaced);
    assert!(v.volumes[&key(L1, "disk1")].is_alarm() && !VolumeState::Replaced.device_present());
    // Learning again does not overwrite what the volume had.
    inv.learn_disks([(L1, "disk1", d(1))]);
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Replaced);
    // A volume that is gone is forgotten: hotplugged again, it starts afresh.
    inv.forget_disks([(L1, "disk1")]);
    assert_eq!(state(&judge(&inv), L1, "disk1"), VolumeState::Ready);
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
    let ages = |old1, old2| ClusterFacts {
        created: BTreeMap::from([("old1".into(), old1), ("old2".into(), old2), ("current".into(), 300)]),
        ..Default::default()
    };
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
    inv.apply(Observation::Cluster(ClusterFacts {
        created: BTreeMap::from([("old".into(), 100), ("current".into(), 200)]),
        ..Default::default()
    }));
    let v = judge(&inv);
    assert!(superseded(&v, "old") && !superseded(&v, "current"));
    assert!(!safe(&v, "old") && !safe(&v, "current"));
    assert_eq!(crate::notice::unsafe_handoffs(&v), BTreeSet::from(["old".to_string()]));
    // Created in the same second: which one KubeVirt keeps is not known, so both may go.
    inv.apply(Observation::Cluster(ClusterFacts {
        created: BTreeMap::from([("old".into(), 100), ("current".into(), 100)]),
        ..Default::default()
    }));
    let v = judge(&inv);
    assert!(superseded(&v, "old") && superseded(&v, "current"));
    assert_eq!(crate::notice::unsafe_handoffs(&v), BTreeSet::from(["current".to_string(), "old".to_string()]));
    // A lone pod is never superseded.
    let lone = World::default()
        .launcher(L1, &[("disk1", LauncherEntry::Block(d(1)))])
        .attachment("old", &[("disk1", d(1))])
        .devices(&[d(1)]);
    assert!(!superseded(&lone.judge(), "old"));
}
