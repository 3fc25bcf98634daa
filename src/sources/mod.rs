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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::device::DevNum;
use crate::inventory::{FullScan, Observation, Seq};
use crate::layout::{KubeletLayout, LayoutError, PodDisks, PodUid, Skipped, Unreadable};

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

/// The wall-clock time of each part of a [`NodeRead`]; the pods and the devices are read at
/// the same time.
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

/// Reads the whole node: every pod directory, `/sys/dev/block` and the mount table. The
/// block devices and their identities are read on a second thread meanwhile: on a node of
/// thousands of volumes each half takes tens of milliseconds, and the first full scan is
/// what start-up waits for. Both begin after `seq` was taken, so their order does not matter.
pub fn read_node(paths: &NodePaths, seq: Seq) -> Result<NodeRead, ReadError> {
    let sysfs = &paths.sysfs;
    let read_devices = || {
        let started = Instant::now();
        let devices =
            sysfs::list_block_devices(sysfs).map_err(|source| ReadError::Sysfs { path: sysfs.clone(), source })?;
        let identities = sysfs::identities(sysfs, devices.iter().copied());
        Ok::<_, ReadError>((devices, identities, started.elapsed()))
    };
    let (pods, devices) = std::thread::scope(|s| {
        // Without a thread (none to be had), one after the other.
        let devices = std::thread::Builder::new().name("scan-devices".into()).spawn_scoped(s, read_devices);
        let started = Instant::now();
        let pods = read_pods(&paths.layout()).map(|pods| (pods, started.elapsed()));
        let devices = match devices {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => read_devices(),
        };
        (pods, devices)
    });
    let ((pods, unreadable, skipped), pods_took) = pods?;
    let (devices, identities, devices_took) = devices?;
    let started = Instant::now();
    let (mounts, malformed_mount_lines) = mounts::read_mounts(&paths.mountinfo, &paths.mountinfo_kubelet_root)
        .map_err(|source| ReadError::Mountinfo { path: paths.mountinfo.clone(), source })?;
    Ok(NodeRead {
        scan: FullScan { seq, pods, unreadable, devices, identities, mounts },
        skipped,
        malformed_mount_lines,
        took: ReadTook { pods: pods_took, devices: devices_took, mounts: started.elapsed() },
    })
}

type PodReads = (BTreeMap<PodUid, PodDisks>, BTreeMap<PodUid, (Option<PodDisks>, Unreadable)>, Vec<Skipped>);

/// Every pod directory: the readable ones, the unreadable ones, and the entries skipped.
fn read_pods(layout: &KubeletLayout) -> Result<PodReads, ReadError> {
    let (uids, mut skipped) = layout.list_pods()?;
    let (mut pods, mut unreadable) = (BTreeMap::new(), BTreeMap::new());
    for mut pod in layout.scan_pods(&uids) {
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
    Ok((pods, unreadable, skipped))
}
