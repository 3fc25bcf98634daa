//! Sources: threads that watch the kernel and the kubelet tree and turn what they see into
//! [`Observation`]s. They never decide. A loss anywhere (inotify queue overflow, netlink
//! `ENOBUFS`, the tree appearing or disappearing, the engine's queue full) becomes one
//! message: rescan. Each source is a [`runner::Source`]; [`runner::Sources`] runs them
//! (thread, heartbeat, logs, stop) and [`channel`] carries what they send to the engine.

pub mod channel;
pub mod health;
pub mod inotify;
pub mod kmsg;
pub mod mounts;
pub mod runner;
pub mod sysfs;
pub mod uevents;

pub use channel::{Receiver, Sender};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::device::DevNum;
use crate::inventory::{FullScan, Observation, Seq};
use crate::layout::{BeforeReading, KubeletLayout, LayoutError, Skipped};

/// Where the agent reads the node from. Every path is configurable so that tests run on
/// a temp tree and a container can mount the host's paths anywhere.
#[derive(Clone, Debug)]
pub struct NodePaths {
    pub kubelet_root: PathBuf,
    /// The kubelet root as the mount namespace of `mountinfo` names it.
    pub mountinfo_kubelet_root: PathBuf,
    pub sysfs: PathBuf,
    pub mountinfo: PathBuf,
}

impl NodePaths {
    pub fn layout(&self) -> KubeletLayout {
        KubeletLayout::new(&self.kubelet_root)
    }
}

/// Hands out [`Seq`] numbers: take one *before* reading.
#[derive(Debug, Default)]
pub struct SeqClock(AtomicU64);

impl SeqClock {
    pub fn next(&self) -> Seq {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Why a full rescan runs; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RescanReason {
    /// The watch set is in place (at start, or once the kubelet root appeared).
    WatchesReady,
    Periodic,
    InotifyOverflow,
    UeventOverflow,
    /// The kubelet root went away.
    RootGone,
    /// The engine's queue was full and reads were dropped. Last: when a source says what
    /// it lost, its reason is the one counted.
    QueueOverflow,
}

impl RescanReason {
    pub const ALL: [RescanReason; 6] = [
        RescanReason::WatchesReady,
        RescanReason::Periodic,
        RescanReason::InotifyOverflow,
        RescanReason::UeventOverflow,
        RescanReason::RootGone,
        RescanReason::QueueOverflow,
    ];

    pub fn metric_label(self) -> &'static str {
        match self {
            RescanReason::WatchesReady => "watches_ready",
            RescanReason::Periodic => "periodic",
            RescanReason::InotifyOverflow => "inotify_overflow",
            RescanReason::UeventOverflow => "uevent_overflow",
            RescanReason::RootGone => "root_gone",
            RescanReason::QueueOverflow => "queue_overflow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    Inotify,
    Uevent,
    Mountinfo,
    /// Block-layer error lines from the kernel log.
    Kmsg,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [SourceKind::Inotify, SourceKind::Uevent, SourceKind::Mountinfo, SourceKind::Kmsg];

    pub fn metric_label(self) -> &'static str {
        match self {
            SourceKind::Inotify => "inotify",
            SourceKind::Uevent => "uevent",
            SourceKind::Mountinfo => "mountinfo",
            SourceKind::Kmsg => "kmsg",
        }
    }
}

/// What sources send the engine.
#[derive(Debug)]
pub enum Message {
    /// Observations made by one read, applied together: a pod read carries the presence
    /// of the devices its nodes point at, so the engine never judges one without the other.
    Observed {
        obs: Vec<Observation>,
        source: SourceKind,
        received: Instant,
        skipped: Vec<Skipped>,
    },
    Rescan(RescanReason),
    /// A full read a source made (the inotify walk: it reads each pod as it watches it),
    /// applied as the engine's own rescan would be.
    Scanned {
        reason: RescanReason,
        read: Box<Result<NodeRead, ReadError>>,
        started: Instant,
    },
    /// The kernel logged a block-layer error on this device.
    IoError {
        device: DevNum,
        received: Instant,
    },
    /// The kernel log overwrote this many records before they were read.
    KmsgLost(u64),
    /// What the API server says about this node's objects (cluster mode).
    Cluster(Box<crate::model::ClusterView>),
}

/// The result of reading everything once: what `scan` prints and a rescan applies.
#[derive(Debug)]
pub struct NodeRead {
    pub scan: FullScan,
    pub skipped: Vec<Skipped>,
    /// Lines of mountinfo that did not parse.
    pub malformed_mount_lines: usize,
    /// How long each part took: the start-up log says where the time went.
    pub took: ReadTook,
}

/// The wall-clock time of each part of a [`NodeRead`]: from the start to the last pod
/// read, the devices (read meanwhile), then the mount table.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadTook {
    pub pods: Duration,
    pub devices: Duration,
    pub mounts: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot list block devices in {path}: {source}")]
    Sysfs { path: PathBuf, source: std::io::Error },
    #[error("cannot read mount table {path}: {source}")]
    Mountinfo { path: PathBuf, source: std::io::Error },
}

/// Reads the whole node: every pod directory, `/sys/dev/block` and the mount table, all
/// after `seq` was taken, so the order of the reads does not matter. The first full read
/// is what start-up waits for, and on a node of thousands of volumes the pods and the
/// devices take tens of milliseconds each: two threads share the work (see
/// [`read_node_with`]).
pub fn read_node(paths: &NodePaths, seq: Seq) -> Result<NodeRead, ReadError> {
    read_node_with(paths, seq, [&mut (), &mut ()])
}

/// [`read_node`], telling `before` about each pod directory before it is read: the inotify
/// walk places its watches there, so that the tree is walked once, not once to watch and
/// once more to read. This thread reads pods (telling `before[0]`); a second one reads the
/// block devices and their identities, then takes its share of the pods that are left
/// (telling `before[1]`). Pods are handed out one at a time, so neither thread idles while
/// the other has work.
pub fn read_node_with<B: BeforeReading + Send>(
    paths: &NodePaths,
    seq: Seq,
    before: [&mut B; 2],
) -> Result<NodeRead, ReadError> {
    let started = Instant::now();
    let layout = paths.layout();
    let (uids, mut skipped) = layout.list_pods()?;
    let reader = layout.pod_reader();
    let next = AtomicUsize::new(0);
    let read_pods = |before: &mut B| {
        let mut scans = Vec::new();
        while let Some(uid) = uids.get(next.fetch_add(1, Ordering::Relaxed)) {
            scans.push(reader.read(uid, before));
        }
        (scans, started.elapsed())
    };
    let sysfs = &paths.sysfs;
    let read_devices = || {
        let started = Instant::now();
        let devices =
            sysfs::list_block_devices(sysfs).map_err(|source| ReadError::Sysfs { path: sysfs.clone(), source })?;
        let identities = sysfs::identities(sysfs, devices.iter().copied());
        Ok::<_, ReadError>((devices, identities, started.elapsed()))
    };
    let [mine, theirs] = before;
    let (mut scans, pods_took, devices) = std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("scan-devices".into())
            .spawn_scoped(s, || (read_devices(), read_pods(theirs)));
        let (mut scans, mut pods_took) = read_pods(mine);
        let devices = match helper {
            Ok(handle) => {
                let (devices, (more, took)) = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                scans.extend(more);
                pods_took = pods_took.max(took);
                devices
            }
            // Without a thread (none to be had), one after the other.
            Err(_) => read_devices(),
        };
        (scans, pods_took, devices)
    });
    let (devices, identities, devices_took) = devices?;
    // In the order of the listing, whichever thread read them.
    scans.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));
    let (mut pods, mut unreadable) = (BTreeMap::new(), BTreeMap::new());
    for mut pod in scans {
        skipped.append(&mut pod.skipped);
        match (pod.disks, pod.unreadable) {
            (disks, Some(errno)) => {
                unreadable.insert(pod.uid, (disks, errno));
            }
            (Some(disks), None) => {
                pods.insert(pod.uid, disks);
            }
            (None, None) => {}
        }
    }
    let mounts_started = Instant::now();
    let (mounts, malformed_mount_lines) = mounts::read_mounts(&paths.mountinfo, &paths.mountinfo_kubelet_root)
        .map_err(|source| ReadError::Mountinfo { path: paths.mountinfo.clone(), source })?;
    Ok(NodeRead {
        scan: FullScan { seq, pods, unreadable, devices, identities, mounts },
        skipped,
        malformed_mount_lines,
        took: ReadTook { pods: pods_took, devices: devices_took, mounts: mounts_started.elapsed() },
    })
}
