//! The shared vocabulary: what the sources observe, what the API says, and what the
//! deciding logic concludes. Plain data, no I/O. The pure core (`inventory`, `verdict`,
//! `notice`) imports only this module (and `device` for `DevNum`, re-exported here); the
//! I/O around it (sources, cluster, HTTP, metrics) speaks the same words.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use nix::errno::Errno;
use serde::Serialize;

pub use crate::device::DevNum;

/// Order of reads: higher was read later (see `inventory`).
pub type Seq = u64;

/// A pod's UID, as the API server gives it and the kubelet names its directory. Cheap to
/// clone (shared): it keys every map of the agent and travels in every snapshot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodUid(Arc<str>);

impl PodUid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for PodUid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PodUid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PodUid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for PodUid {
    fn from(s: &str) -> Self {
        PodUid(s.into())
    }
}

impl From<String> for PodUid {
    fn from(s: String) -> Self {
        PodUid(s.into())
    }
}

impl From<&String> for PodUid {
    fn from(s: &String) -> Self {
        PodUid(s.as_str().into())
    }
}

impl PartialEq<str> for PodUid {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for PodUid {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for PodUid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Which disk a device number belongs to now. A device number is reused when a disk is
/// torn down and another created (nbd, NVMe-oF, loop): `diskseq` (Linux 5.15+) is new for
/// every disk the kernel creates, and a partition carries its disk's plus its number;
/// where the kernel has none, udev's WWN or serial. Uevents and sysfs give the same value
/// for the same disk, so a `change` event never looks like another disk.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskId {
    DiskSeq { diskseq: u64, partition: Option<u32> },
    Wwn(Arc<str>),
    Serial(Arc<str>),
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskId::DiskSeq { diskseq, partition: None } => write!(f, "diskseq:{diskseq}"),
            DiskId::DiskSeq { diskseq, partition: Some(p) } => write!(f, "diskseq:{diskseq}p{p}"),
            DiskId::Wwn(w) => write!(f, "wwn:{w}"),
            DiskId::Serial(s) => write!(f, "serial:{s}"),
        }
    }
}

impl fmt::Debug for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

// ------------------------------------------------------------------ what the node shows

/// What a pod's hotplug-disks directory holds, by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodDisks {
    Launcher(BTreeMap<String, LauncherEntry>),
    /// Block volumes served by an attachment pod: volume name -> device of its node.
    Attachment(BTreeMap<String, DevNum>),
}

impl PodDisks {
    /// Every device number this pod's nodes point at.
    pub fn devices(&self) -> Vec<DevNum> {
        match self {
            PodDisks::Launcher(entries) => entries
                .values()
                .filter_map(|e| match e {
                    LauncherEntry::Block(d) => Some(*d),
                    _ => None,
                })
                .collect(),
            PodDisks::Attachment(vols) => vols.values().copied().collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherEntry {
    /// `<volume>`: a block node pointing at this device.
    Block(DevNum),
    /// `<volume>.img`: whether something is mounted on it is for mountinfo to say.
    Image,
    /// `<volume>/`: a utility or memory-dump volume; not a disk, not judged.
    Directory,
}

/// Why a pod's hotplug tree could not be read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    Error(Errno),
    /// More than [`MAX_ENTRIES`] entries in one directory: the rest was not read.
    TooManyEntries,
}

/// Where a mount point sits in the layout, when it matters to us.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MountSite {
    /// `<uid>/volumes/kubernetes.io~empty-dir/hotplug-disks/<volume>.img`
    LauncherImage { pod: PodUid, volume: String },
    /// Anything else under `<uid>/volumes/`: a pod's own volume mounts (an attachment
    /// pod's PVC is mounted there by the kubelet).
    PodVolume { pod: PodUid, path: String },
}

impl MountSite {
    /// The pod whose directory the mount point is in.
    pub fn pod(&self) -> &PodUid {
        match self {
            MountSite::LauncherImage { pod, .. } | MountSite::PodVolume { pod, .. } => pod,
        }
    }
}

// ------------------------------------------------------------------ what the API says

/// The API server's part of the picture (cluster mode): which pod directories belong to
/// which role. Roles come from here only, never from what a directory holds: a tenant
/// controls the contents of its pods' emptyDirs (names, sockets, device nodes with any
/// number), not the API's record of who owns what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Launcher pods the API confirms on this node (label `kubevirt.io=virt-launcher`,
    /// controller-owned by the VMI named in `kubevirt.io/created-by`).
    pub launchers: BTreeMap<PodUid, ApiLauncher>,
    /// Attachment pods the API shows on this node (label `kubevirt.io=hotplug-disk`, a
    /// controller ownerReference to a pod). Their launcher is confirmed only when it is in
    /// `launchers` (same namespace checked when the view was built).
    pub attachment_pods: BTreeMap<PodUid, ApiAttachment>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiLauncher {
    /// The volume names in its VMI's spec; `None` when the VMI is not watched (not on this
    /// node any more, e.g. a migration source): nothing can be said about unplugs then.
    pub spec_volumes: Option<BTreeSet<String>>,
    /// Why nothing of this launcher needs protecting any more, when that is so.
    pub finished: Option<Finished>,
}

/// Why a launcher's devices need no protection any more: KubeVirt's own cleanup
/// (`deleteAllAttachmentPods`, `deleteOrphanedAttachmentPods`) must not be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The VMI is Succeeded or Failed.
    VmiFinal,
    /// The launcher pod is Succeeded, Failed or being deleted.
    LauncherDone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAttachment {
    /// The launcher pod of its controller ownerReference.
    pub launcher: PodUid,
    /// Creation time, in the API server's whole seconds: which pod is newer.
    pub created: i64,
    /// A WaitForFirstConsumer trigger pod (annotation `kubevirt.io/ephemeral-provisioning`):
    /// it exists only to get a PVC bound and serves no VM.
    pub trigger: bool,
}

/// How a person knows a pod: its namespace, its VMI and its own name (cluster mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodNames {
    pub namespace: Option<String>,
    pub vmi: Option<String>,
    /// The pod's own name.
    pub pod: Option<String>,
}

/// A VMI, enough to name it and to point an Event at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What the API server says about this node's hotplug objects (cluster mode), as the
/// engine receives it (built by `cluster::view`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Names for every launcher and attachment pod on the node, by UID.
    pub names: BTreeMap<PodUid, PodNames>,
    /// Which pods play which role, as the API confirms it: what the engine judges with.
    pub facts: ClusterFacts,
    /// The attachment pods whose conditions the agent keeps (those in `facts`), UID -> name.
    pub attachment_pods: BTreeMap<PodUid, String>,
    /// Launcher pod -> its VMI.
    pub vmis: BTreeMap<PodUid, VmiRef>,
}

// ------------------------------------------------------------------ what is decided

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

/// Whether deleting an attachment pod now is safe, and why: the value of its
/// `hotplug-watchdog.io/HandoffSafe` condition. `True` only on positive evidence; any
/// doubt is `Unknown`, never a guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum HandoffReason {
    // True: nothing this pod serves would be lost.
    /// Every launcher device this pod serves is also served by a pod that stays.
    DevicesServedElsewhere,
    /// The launcher uses none of this pod's devices.
    NoDeviceInUse,
    /// The VMI is Succeeded or Failed.
    VmiFinal,
    /// The launcher pod is Succeeded, Failed, being deleted, or its hotplug directory is
    /// gone from the node.
    LauncherGone,
    /// A WaitForFirstConsumer trigger pod: it only gets a PVC bound, no VM uses it.
    TriggerPod,
    // False.
    /// Only this pod serves a device the VM uses: deleting it tears the disk down.
    SoleBacker,
    // Unknown: the agent cannot tell.
    /// The pod's own directory could not be read (EACCES, EMFILE, EIO, ...).
    DirectoryUnreadable,
    /// The launcher's directory could not be read, or is not shaped like a launcher's.
    LauncherUnreadable,
    /// The API does not (yet) confirm the launcher this pod says it works for.
    LauncherNotConfirmed,
    /// A filesystem volume of the launcher has its image but no mount yet: which pod will
    /// back it is not known.
    FilesystemVolumePending,
    /// The mount table does not show the kubelet root the agent reads: filesystem volumes
    /// cannot be seen.
    MountTableMismatch,
    /// The API places the pod on this node, the node does not show its directory (yet).
    NotOnNode,
}

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl HandoffReason {
    pub const ALL: [HandoffReason; 12] = [
        HandoffReason::DevicesServedElsewhere,
        HandoffReason::NoDeviceInUse,
        HandoffReason::VmiFinal,
        HandoffReason::LauncherGone,
        HandoffReason::TriggerPod,
        HandoffReason::SoleBacker,
        HandoffReason::DirectoryUnreadable,
        HandoffReason::LauncherUnreadable,
        HandoffReason::LauncherNotConfirmed,
        HandoffReason::FilesystemVolumePending,
        HandoffReason::MountTableMismatch,
        HandoffReason::NotOnNode,
    ];

    pub fn status(self) -> ConditionStatus {
        use HandoffReason::*;
        match self {
            DevicesServedElsewhere | NoDeviceInUse | VmiFinal | LauncherGone | TriggerPod => ConditionStatus::True,
            SoleBacker => ConditionStatus::False,
            DirectoryUnreadable
            | LauncherUnreadable
            | LauncherNotConfirmed
            | FilesystemVolumePending
            | MountTableMismatch
            | NotOnNode => ConditionStatus::Unknown,
        }
    }

    /// The condition's reason (CamelCase, as Kubernetes conditions have them).
    pub fn as_str(self) -> &'static str {
        use HandoffReason::*;
        match self {
            DevicesServedElsewhere => "DevicesServedElsewhere",
            NoDeviceInUse => "NoDeviceInUse",
            VmiFinal => "VMIFinal",
            LauncherGone => "LauncherGone",
            TriggerPod => "TriggerPod",
            SoleBacker => "SoleBacker",
            DirectoryUnreadable => "DirectoryUnreadable",
            LauncherUnreadable => "LauncherUnreadable",
            LauncherNotConfirmed => "LauncherNotConfirmed",
            FilesystemVolumePending => "FilesystemVolumePending",
            MountTableMismatch => "MountTableMismatch",
            NotOnNode => "NotOnNode",
        }
    }
}
