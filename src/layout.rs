//! The kubelet's on-disk layout of hotplug volumes: every path the agent builds or parses
//! is built or parsed here, from one configurable root, so tests run on a temp tree and
//! production on `/var/lib/kubelet/pods`.
//!
//! ```text
//! <root>/<podUID>/volumes/kubernetes.io~empty-dir/hotplug-disks/
//!     launcher pod:    <volume>        block node made by virt-handler (mknod)
//!                      <volume>.img    file with disk.img bind-mounted onto it
//!                      <volume>/       utility / memory-dump volume directory
//!     attachment pod:  hp.sock         the attachment pod's socket
//!                      <volume>/<pvcUID>   block node of the PVC (volumeDevices)
//! ```
//! Reading never follows a symlink: every directory is opened with `O_NOFOLLOW` relative
//! to its parent, and entries are examined with `AT_SYMLINK_NOFOLLOW`. What does not fit
//! the layout is returned as a [`Skipped`] entry with a reason, never an error that stops
//! the scan of the other pods.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use crate::device::DevNum;
pub use crate::model::{LauncherEntry, MountSite, PodDisks, PodUid, Unreadable};

/// The directories between a pod directory and its hotplug-disks emptyDir.
pub const HOTPLUG_SUBPATH: [&str; 3] = ["volumes", "kubernetes.io~empty-dir", "hotplug-disks"];
/// The attachment pod's socket in its hotplug-disks directory.
pub const ATTACHMENT_SOCKET: &str = "hp.sock";
/// Suffix of a filesystem-mode volume in the launcher's hotplug-disks directory.
pub const IMAGE_SUFFIX: &str = ".img";
pub const DEFAULT_ROOT: &str = "/var/lib/kubelet/pods";

/// One pod directory, read once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodScan {
    pub uid: PodUid,
    /// `None`: the pod has no hotplug-disks directory (or it is gone), or it could not be
    /// read at all (then `unreadable` says why).
    pub disks: Option<PodDisks>,
    pub skipped: Vec<Skipped>,
    /// Why the pod's hotplug tree could not be read whole: the first error other than
    /// "not there" (EACCES, EMFILE, EIO, ...), or more entries than the agent reads. The
    /// read is then incomplete: what is missing from `disks` may still be there, so it
    /// proves nothing (a volume not listed is not a volume gone). Absence (ENOENT) is not
    /// an error: it is what the pod looks like.
    pub unreadable: Option<Unreadable>,
}

/// Told before a reader looks into a pod's directories. The inotify walk watches each
/// directory there: a watch placed before a directory is read reports any change after
/// the read, so the read plus its events never miss one.
pub trait BeforeReading {
    /// Before the pod's directories down to hotplug-disks are opened.
    fn pod(&mut self, uid: &str);
    /// Before the volume directory `path`, in the pod's hotplug-disks, is opened.
    fn volume_dir(&mut self, uid: &str, path: &Path);
}

/// A read that nobody is told about.
impl BeforeReading for () {
    fn pod(&mut self, _: &str) {}
    fn volume_dir(&mut self, _: &str, _: &Path) {}
}

/// The most entries read from one hotplug-disks or volume directory. A tenant controls
/// what its pods' emptyDirs hold; memory, series and watches must not follow. KubeVirt
/// gives a VM far fewer hotplug volumes than this (each is a disk on the VM's controller).
pub const MAX_ENTRIES: usize = 1024;

/// Something in a watched tree that does not fit the layout, and why it was passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: SkipReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("symlink (never followed)")]
    Symlink,
    #[error("name is not UTF-8")]
    NonUtf8Name,
    #[error("FIFO, socket or character device where a volume was expected")]
    SpecialFile,
    #[error("regular file without the .img suffix")]
    UnexpectedFile,
    #[error("not a directory")]
    NotADirectory,
    #[error("second block node in one attachment volume directory")]
    ExtraBlockNode,
    #[error("volume name used twice (block node and .img)")]
    DuplicateVolume,
    #[error("block node or image at the top of an attachment pod's directory")]
    UnexpectedInAttachmentPod,
    #[error("unreadable: {0}")]
    Unreadable(Errno),
    #[error("more than 1024 entries in one directory: the rest is not read")]
    TooManyEntries,
}

impl SkipReason {
    /// Every value of [`SkipReason::metric_label`].
    pub const METRIC_LABELS: [&'static str; 10] = [
        "symlink",
        "non_utf8_name",
        "special_file",
        "unexpected_file",
        "not_a_directory",
        "extra_block_node",
        "duplicate_volume",
        "unexpected_in_attachment_pod",
        "unreadable",
        "too_many_entries",
    ];

    /// Bounded label value for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SkipReason::Symlink => "symlink",
            SkipReason::NonUtf8Name => "non_utf8_name",
            SkipReason::SpecialFile => "special_file",
            SkipReason::UnexpectedFile => "unexpected_file",
            SkipReason::NotADirectory => "not_a_directory",
            SkipReason::ExtraBlockNode => "extra_block_node",
            SkipReason::DuplicateVolume => "duplicate_volume",
            SkipReason::UnexpectedInAttachmentPod => "unexpected_in_attachment_pod",
            SkipReason::Unreadable(_) => "unreadable",
            SkipReason::TooManyEntries => "too_many_entries",
        }
    }

    /// Why the pod's read is incomplete, when this entry makes it so.
    pub fn unreadable(&self) -> Option<Unreadable> {
        match self {
            SkipReason::Unreadable(e) => Some(Unreadable::Error(*e)),
            SkipReason::TooManyEntries => Some(Unreadable::TooManyEntries),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("kubelet pods directory {0} does not exist")]
    RootMissing(PathBuf),
    #[error("cannot read kubelet pods directory {path}: {errno}")]
    RootUnreadable { path: PathBuf, errno: Errno },
}

#[derive(Clone, Debug)]
pub struct KubeletLayout {
    root: PathBuf,
}

impl KubeletLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KubeletLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    pub fn hotplug_dir(&self, uid: &str) -> PathBuf {
        HOTPLUG_SUBPATH.iter().fold(self.pod_dir(uid), |p, c| p.join(c))
    }

    /// The pod directories under the root. Names that are not UTF-8 cannot be pod UIDs.
    pub fn list_pods(&self) -> Result<(Vec<PodUid>, Vec<Skipped>), LayoutError> {
        let root = open_root(&self.root).map_err(|errno| match errno {
            Errno::ENOENT => LayoutError::RootMissing(self.root.clone()),
            errno => LayoutError::RootUnreadable { path: self.root.clone(), errno },
        })?;
        let mut pods = Vec::new();
        let mut skipped = Vec::new();
        for_each_entry(root, |dir, name, listed| {
            let path = self.root.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            match kind_of(dir, name, listed).map(|(kind, _)| kind) {
                Ok(SFlag::S_IFDIR) => match name.to_str() {
                    Ok(uid) => pods.push(PodUid::from(uid)),
                    Err(_) => skipped.push(Skipped { path, reason: SkipReason::NonUtf8Name }),
                },
                Ok(SFlag::S_IFLNK) => skipped.push(Skipped { path, reason: SkipReason::Symlink }),
                Ok(_) => skipped.push(Skipped { path, reason: SkipReason::NotADirectory }),
                Err(Errno::ENOENT) => {} // went away while we listed
                Err(e) => skipped.push(Skipped { path, reason: SkipReason::Unreadable(e) }),
            }
            // Only the kubelet makes pod directories (a node runs a bounded number of pods).
            ControlFlow::Continue(())
        })
        .map_err(|errno| LayoutError::RootUnreadable { path: self.root.clone(), errno })?;
        pods.sort();
        Ok((pods, skipped))
    }

    /// Reads one pod's hotplug-disks directory.
    pub fn scan_pod(&self, uid: &str) -> PodScan {
        self.scan_pod_with(uid, &mut ())
    }

    /// Reads one pod's hotplug-disks directory, telling `before` first.
    pub fn scan_pod_with(&self, uid: &str, before: &mut dyn BeforeReading) -> PodScan {
        self.pod_reader().read(&PodUid::from(uid), before)
    }

    /// Reads pods one at a time with the root opened once; shared by the threads of a
    /// full read.
    pub fn pod_reader(&self) -> PodReader<'_> {
        PodReader { layout: self, root: open_root(&self.root) }
    }

    fn scan_pod_in(&self, root: &OwnedFd, uid: &str, before: &mut dyn BeforeReading) -> PodScan {
        let mut scan = PodScan { uid: uid.into(), disks: None, skipped: Vec::new(), unreadable: None };
        before.pod(uid);
        let fd = match open_hotplug_dir(root, &self.root, uid) {
            Ok(fd) => fd,
            // Only the kubelet (root) makes these directories: anything but absence here
            // means the read failed, not that there is nothing.
            Err(Some(Blocked { path, reason, errno })) => {
                scan.unreadable = Some(reason.unreadable().unwrap_or(Unreadable::Error(errno)));
                scan.skipped.push(Skipped { path, reason });
                return scan;
            }
            Err(None) => return scan,
        };
        let path = self.hotplug_dir(uid);
        let mut reader = HotplugDirReader::new(&path, uid, before);
        let mut entries = 0;
        let listed = for_each_entry(fd, |dir, name, kind| {
            entries += 1;
            if entries > MAX_ENTRIES {
                return ControlFlow::Break(());
            }
            reader.entry(dir, name, kind);
            ControlFlow::Continue(())
        });
        if let Err(errno) = listed {
            scan.unreadable = Some(Unreadable::Error(errno));
            scan.skipped.push(Skipped { path, reason: SkipReason::Unreadable(errno) });
            return scan;
        }
        if entries > MAX_ENTRIES {
            reader.skip(path.clone(), SkipReason::TooManyEntries);
        }
        scan.skipped.append(&mut reader.skipped);
        scan.unreadable = reader.unreadable;
        let HotplugDirReader { has_socket, launcher, attachment, .. } = reader;
        scan.disks = Some(if has_socket || !attachment.is_empty() {
            // An attachment pod's directory holds only the socket and volume directories.
            for (name, _) in launcher.iter().filter(|(_, e)| **e != LauncherEntry::Directory) {
                scan.skipped.push(Skipped { path: path.join(name), reason: SkipReason::UnexpectedInAttachmentPod });
            }
            PodDisks::Attachment(attachment)
        } else {
            PodDisks::Launcher(launcher)
        });
        scan
    }

    /// Places a mount point in the layout. `mount_root` is the kubelet root as the
    /// mountinfo's mount namespace names it (the host path when the agent runs in a
    /// container with the root mounted elsewhere).
    pub fn classify_mount_point(mount_root: &Path, mount_point: &Path) -> Option<MountSite> {
        let rel = mount_point.strip_prefix(mount_root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?),
                _ => return None,
            }
        }
        match parts.as_slice() {
            [pod, v, e, h, file] if [*v, *e, *h] == HOTPLUG_SUBPATH && file.len() > IMAGE_SUFFIX.len() => {
                let volume = file.strip_suffix(IMAGE_SUFFIX)?;
                Some(MountSite::LauncherImage { pod: PodUid::from(*pod), volume: volume.to_string() })
            }
            [pod, v, rest @ ..] if *v == HOTPLUG_SUBPATH[0] && !rest.is_empty() => {
                Some(MountSite::PodVolume { pod: PodUid::from(*pod), path: rest.join("/") })
            }
            _ => None,
        }
    }
}

/// Reads pod directories under a root opened once ([`KubeletLayout::pod_reader`]).
pub struct PodReader<'a> {
    layout: &'a KubeletLayout,
    root: Result<OwnedFd, Errno>,
}

impl PodReader<'_> {
    /// Reads one pod's hotplug-disks directory, telling `before` first.
    pub fn read(&self, uid: &PodUid, before: &mut dyn BeforeReading) -> PodScan {
        match &self.root {
            Ok(root) => self.layout.scan_pod_in(root, uid, before),
            Err(errno) => PodScan {
                uid: uid.clone(),
                disks: None,
                skipped: vec![Skipped { path: self.layout.pod_dir(uid), reason: SkipReason::Unreadable(*errno) }],
                unreadable: Some(Unreadable::Error(*errno)),
            },
        }
    }
}

/// Collects the entries of one hotplug-disks directory.
struct HotplugDirReader<'a> {
    dir_path: &'a Path,
    uid: &'a str,
    before: &'a mut dyn BeforeReading,
    has_socket: bool,
    launcher: BTreeMap<String, LauncherEntry>,
    attachment: BTreeMap<String, DevNum>,
    skipped: Vec<Skipped>,
    /// The first read error (not absence) inside the directory, or too many entries.
    unreadable: Option<Unreadable>,
}

impl<'a> HotplugDirReader<'a> {
    fn new(dir_path: &'a Path, uid: &'a str, before: &'a mut dyn BeforeReading) -> Self {
        HotplugDirReader {
            dir_path,
            uid,
            before,
            has_socket: false,
            launcher: BTreeMap::new(),
            attachment: BTreeMap::new(),
            skipped: Vec::new(),
            unreadable: None,
        }
    }

    fn skip(&mut self, path: PathBuf, reason: SkipReason) {
        if let Some(why) = reason.unreadable() {
            self.unreadable.get_or_insert(why);
        }
        self.skipped.push(Skipped { path, reason });
    }

    fn entry(&mut self, dir: &OwnedFd, name: &CStr, listed: Option<SFlag>) {
        let path = self.dir_path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let Ok(name_str) = name.to_str() else {
            return self.skip(path, SkipReason::NonUtf8Name);
        };
        let (kind, rdev) = match kind_of(dir, name, listed) {
            Ok(k) => k,
            Err(Errno::ENOENT) => return, // removed while we listed; its event follows
            Err(e) => return self.skip(path, SkipReason::Unreadable(e)),
        };
        match kind {
            SFlag::S_IFBLK => self.add_launcher(path, name_str, LauncherEntry::Block(DevNum::from_raw(rdev))),
            SFlag::S_IFREG => match name_str.strip_suffix(IMAGE_SUFFIX) {
                Some(volume) if !volume.is_empty() => self.add_launcher(path, volume, LauncherEntry::Image),
                _ => self.skip(path, SkipReason::UnexpectedFile),
            },
            SFlag::S_IFSOCK if name_str == ATTACHMENT_SOCKET => self.has_socket = true,
            SFlag::S_IFDIR => self.volume_dir(dir, name, name_str, path),
            SFlag::S_IFLNK => self.skip(path, SkipReason::Symlink),
            _ => self.skip(path, SkipReason::SpecialFile),
        }
    }

    fn add_launcher(&mut self, path: PathBuf, volume: &str, entry: LauncherEntry) {
        use std::collections::btree_map::Entry;
        match self.launcher.entry(volume.to_string()) {
            Entry::Vacant(v) => {
                v.insert(entry);
            }
            // A block node wins over an image or directory of the same name: it is the
            // one a VM can lose. Either way the other one is reported.
            Entry::Occupied(mut o) => {
                if matches!(entry, LauncherEntry::Block(_)) {
                    o.insert(entry);
                }
                self.skip(path, SkipReason::DuplicateVolume);
            }
        }
    }

    /// `<volume>/`: in an attachment pod it holds `<pvcUID>`, a block node; in a launcher
    /// it is a utility volume whose contents are not ours to judge.
    fn volume_dir(&mut self, dir: &OwnedFd, name: &CStr, volume: &str, path: PathBuf) {
        self.before.volume_dir(self.uid, &path);
        let sub = match open_dir(dir, Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()))) {
            Ok(fd) => fd,
            Err(errno) => {
                if let Some(reason) = open_failure_reason(dir, name, errno) {
                    self.skip(path, reason);
                }
                return;
            }
        };
        let mut nodes: Vec<(String, DevNum)> = Vec::new();
        let (mut stat_error, mut entries) = (None, 0);
        let listed = for_each_entry(sub, |subdir, child, listed| {
            entries += 1;
            if entries > MAX_ENTRIES {
                return ControlFlow::Break(());
            }
            match kind_of(subdir, child, listed) {
                Ok((SFlag::S_IFBLK, rdev)) => {
                    let child = String::from_utf8_lossy(child.to_bytes()).into_owned();
                    nodes.push((child, DevNum::from_raw(rdev)));
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    stat_error.get_or_insert(e);
                }
            }
            ControlFlow::Continue(())
        });
        if let Some(errno) = listed.err().or(stat_error) {
            return self.skip(path, SkipReason::Unreadable(errno));
        }
        if entries > MAX_ENTRIES {
            return self.skip(path, SkipReason::TooManyEntries);
        }
        nodes.sort();
        let mut nodes = nodes.into_iter();
        match nodes.next() {
            Some((_, dev)) => {
                self.attachment.insert(volume.to_string(), dev);
            }
            None => self.add_launcher(path.clone(), volume, LauncherEntry::Directory),
        }
        for (extra, _) in nodes {
            self.skip(path.join(extra), SkipReason::ExtraBlockNode);
        }
    }
}

fn file_kind(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits())
}

/// The configured root is the operator's word: a symlink in it (`/var/lib/kubelet` on
/// another disk is common) is followed. Below it, nothing is.
fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Opens `name` in `parent` as a directory, refusing a symlink.
fn open_dir(parent: &OwnedFd, name: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(parent.as_fd(), name, flags, Mode::empty())
}

/// How a failed open of `name` in `parent` is reported: absence is normal (the pod has no
/// such directory, or it went away), anything else is worth a skip entry. With
/// `O_DIRECTORY` the kernel answers a symlink with ENOTDIR, so look at what is there.
fn open_failure_reason<P: ?Sized + nix::NixPath>(parent: &OwnedFd, name: &P, errno: Errno) -> Option<SkipReason> {
    match errno {
        Errno::ENOENT => None,
        Errno::ELOOP | Errno::ENOTDIR => match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_kind(st.st_mode) == SFlag::S_IFLNK => Some(SkipReason::Symlink),
            Ok(_) => Some(SkipReason::NotADirectory),
            Err(Errno::ENOENT) => None,
            Err(e) => Some(SkipReason::Unreadable(e)),
        },
        e => Some(SkipReason::Unreadable(e)),
    }
}

/// Calls `f(dir_fd, name, kind)` for every entry but `.` and `..`, until it says stop;
/// `kind` is the type the listing gives, `None` where the filesystem does not say. One
/// `getdents64` loop on the descriptor itself: `fdopendir` and the duplicate descriptor
/// it needed cost four more calls per directory, a third of a full scan's system calls
/// on a node of thousands of volumes.
fn for_each_entry(
    fd: OwnedFd,
    mut f: impl FnMut(&OwnedFd, &CStr, Option<SFlag>) -> ControlFlow<()>,
) -> Result<(), Errno> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut dir = rustix::fs::RawDir::new(&fd, &mut buf);
    while let Some(entry) = dir.next() {
        let entry = entry.map_err(|e| Errno::from_raw(e.raw_os_error()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if f(&fd, name, listed_kind(entry.file_type())).is_break() {
            break;
        }
    }
    Ok(())
}

fn listed_kind(t: rustix::fs::FileType) -> Option<SFlag> {
    use rustix::fs::FileType::*;
    Some(match t {
        RegularFile => SFlag::S_IFREG,
        Directory => SFlag::S_IFDIR,
        Symlink => SFlag::S_IFLNK,
        Fifo => SFlag::S_IFIFO,
        Socket => SFlag::S_IFSOCK,
        CharacterDevice => SFlag::S_IFCHR,
        BlockDevice => SFlag::S_IFBLK,
        Unknown => return None,
    })
}

/// An entry's type, and its device number when it is a block node: the listing's type
/// where it gives one and no number is needed, else `fstatat` (never following a
/// symlink). A listed type is as good as a stat's: both are the inode's type when asked,
/// and every later open refuses symlinks by itself.
fn kind_of(dir: &OwnedFd, name: &CStr, listed: Option<SFlag>) -> Result<(SFlag, u64), Errno> {
    match listed {
        Some(kind) if kind != SFlag::S_IFBLK => Ok((kind, 0)),
        _ => fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map(|st| (file_kind(st.st_mode), st.st_rdev)),
    }
}

/// What stands in the way of a pod's hotplug-disks directory.
struct Blocked {
    path: PathBuf,
    reason: SkipReason,
    errno: Errno,
}

/// Opens a pod's hotplug-disks directory below the root (`root_path` names it). One
/// `openat2` that refuses symlinks all the way does it in one call. When that fails for
/// another reason than absence, a walk component by component tells what is in the way
/// (`Err(Some)`), or that the directory is simply not there (`Err(None)`).
fn open_hotplug_dir(root: &OwnedFd, root_path: &Path, uid: &str) -> Result<OwnedFd, Option<Blocked>> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let relative: PathBuf = std::iter::once(uid).chain(HOTPLUG_SUBPATH).collect();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    match openat2(root, &relative, how) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => return Err(None),
        // ELOOP (a symlink), ENOTDIR, EACCES, ENOSYS (before Linux 5.6), EAGAIN (a race):
        // the walk tells which.
        Err(_) => {}
    }
    let mut path = root_path.to_path_buf();
    let mut fd: Option<OwnedFd> = None;
    for component in std::iter::once(uid).chain(HOTPLUG_SUBPATH) {
        path.push(component);
        let parent = fd.as_ref().unwrap_or(root);
        match open_dir(parent, Path::new(component)) {
            Ok(next) => fd = Some(next),
            Err(errno) => {
                return Err(open_failure_reason(parent, component, errno).map(|reason| Blocked { path, reason, errno }))
            }
        }
    }
    Ok(fd.expect("the hotplug path has components"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// Records what a read asks before each directory, and changes the tree there: what
    /// it adds is in the read only if it was asked before the directory was read.
    struct Meddler {
        layout: KubeletLayout,
        asked: Vec<String>,
    }

    impl BeforeReading for Meddler {
        fn pod(&mut self, uid: &str) {
            self.asked.push(format!("pod {uid}"));
            fs::create_dir_all(self.layout.hotplug_dir(uid)).unwrap();
            fs::write(self.layout.hotplug_dir(uid).join("late.img"), b"").unwrap();
        }

        fn volume_dir(&mut self, uid: &str, path: &Path) {
            let name = path.strip_prefix(self.layout.hotplug_dir(uid)).unwrap();
            self.asked.push(format!("volume dir {uid} {}", name.display()));
        }
    }

    #[test]
    fn a_reader_is_told_before_each_directory_it_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = KubeletLayout::new(tmp.path().join("pods"));
        fs::create_dir_all(layout.hotplug_dir("a").join("util")).unwrap();
        fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        symlink(tmp.path().join("elsewhere"), layout.hotplug_dir("a").join("link")).unwrap();
        fs::create_dir_all(layout.pod_dir("b")).unwrap();
        let mut meddler = Meddler { layout: layout.clone(), asked: Vec::new() };
        let reader = layout.pod_reader();
        let scans = [reader.read(&"a".into(), &mut meddler), reader.read(&"b".into(), &mut meddler)];
        // Pod b had no hotplug-disks when the read began: told first, the read saw what
        // was made then. A symlink is no volume directory: not asked about, not followed.
        assert_eq!(meddler.asked, ["pod a", "volume dir a util", "pod b"]);
        for scan in &scans {
            let Some(PodDisks::Launcher(entries)) = &scan.disks else { panic!("{scan:?}") };
            assert_eq!(entries.get("late"), Some(&LauncherEntry::Image), "{scan:?}");
        }
    }

    /// The one-call open of a pod's hotplug-disks gives way to the walk whenever something
    /// is in the way, and the walk names it: a symlink or a file where a directory should
    /// be, at any depth, is skipped and makes the pod unreadable; a pod without the
    /// directory is no skip at all; a good one is read.
    #[test]
    fn what_stands_in_the_way_of_hotplug_disks_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods");
        let layout = KubeletLayout::new(&root);
        let hotplug = |pod: &str| layout.hotplug_dir(pod);
        let empty_dir = |pod: &str| root.join(pod).join("volumes/kubernetes.io~empty-dir");
        fs::create_dir_all(hotplug("good")).unwrap();
        fs::write(hotplug("good").join("disk1.img"), b"").unwrap();
        fs::create_dir_all(root.join("plain/volumes")).unwrap();
        fs::create_dir_all(root.join("file-volumes")).unwrap();
        fs::write(root.join("file-volumes/volumes"), b"").unwrap();
        fs::create_dir_all(empty_dir("file-hotplug")).unwrap();
        fs::write(hotplug("file-hotplug"), b"").unwrap();
        // A symlink midway, to a real hotplug-disks elsewhere: never followed.
        fs::create_dir_all(tmp.path().join("elsewhere/hotplug-disks")).unwrap();
        fs::write(tmp.path().join("elsewhere/hotplug-disks/stolen.img"), b"").unwrap();
        fs::create_dir_all(root.join("link-mid/volumes")).unwrap();
        symlink(tmp.path().join("elsewhere"), empty_dir("link-mid")).unwrap();
        // And one that stays inside the tree, to another pod's: not followed either.
        fs::create_dir_all(root.join("link-inside/volumes")).unwrap();
        symlink("../../good/volumes/kubernetes.io~empty-dir", empty_dir("link-inside")).unwrap();

        let good = layout.scan_pod("good");
        assert_eq!(good.disks, Some(PodDisks::Launcher(BTreeMap::from([("disk1".into(), LauncherEntry::Image)]))));
        assert_eq!((good.skipped.len(), good.unreadable), (0, None));

        let plain = layout.scan_pod("plain");
        assert_eq!((plain.disks, plain.skipped.len(), plain.unreadable), (None, 0, None));

        for (pod, at, reason) in [
            ("file-volumes", root.join("file-volumes/volumes"), SkipReason::NotADirectory),
            ("file-hotplug", hotplug("file-hotplug"), SkipReason::NotADirectory),
            ("link-mid", empty_dir("link-mid"), SkipReason::Symlink),
            ("link-inside", empty_dir("link-inside"), SkipReason::Symlink),
        ] {
            let scan = layout.scan_pod(pod);
            assert_eq!(scan.disks, None, "{pod}");
            assert_eq!(scan.skipped, vec![Skipped { path: at, reason }], "{pod}");
            assert!(matches!(scan.unreadable, Some(Unreadable::Error(_))), "{pod}: {:?}", scan.unreadable);
        }
    }
}
