//! The mount table: which `<volume>.img` has a filesystem bind-mounted on it, and which
//! attachment pod mounts back it. Inotify does not see mounts; the kernel signals a change
//! of `/proc/<pid>/mountinfo` with `POLLPRI`, after which the whole file is read again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::poll::PollFlags;

use super::runner::{Source, Stop, Wait};
use super::{sysfs, Message, NodePaths, Sender, SeqClock, SourceKind};
use crate::device::DevNum;
use crate::inventory::Observation;
use crate::layout::{KubeletLayout, MountSite};
use crate::mountinfo;

/// Mounts inside the kubelet tree, by where they sit; and how many lines were malformed.
pub fn read_mounts(mountinfo_path: &Path, mount_root: &Path) -> io::Result<(BTreeMap<MountSite, DevNum>, usize)> {
    let mut text = Vec::new();
    File::open(mountinfo_path)?.read_to_end(&mut text)?;
    Ok(relevant(&text, mount_root))
}

fn relevant(text: &[u8], mount_root: &Path) -> (BTreeMap<MountSite, DevNum>, usize) {
    let parsed = mountinfo::parse(text);
    let mut out = BTreeMap::new();
    for m in parsed.mounts {
        if let Some(site) = KubeletLayout::classify_mount_point(mount_root, &m.mount_point) {
            // File order is mount order: a later mount on the same point hides the earlier.
            out.insert(site, m.device);
        }
    }
    (out, parsed.malformed_lines)
}

/// Checks that the mount table names the kubelet root the agent reads: `mountinfo`'s
/// namespace and the agent's own must resolve `mountinfo_kubelet_root` and `kubelet_root`
/// to the same directory of the same filesystem. When they do not (a distribution that
/// keeps the kubelet elsewhere than the DaemonSet says, a wrong `--mountinfo-kubelet-root`),
/// no filesystem volume's mount is ever seen, and no verdict may rest on their absence.
pub fn check_view(paths: &NodePaths) -> Result<(), String> {
    let read = |p: &Path| -> Result<Vec<mountinfo::Mount>, String> {
        let mut text = Vec::new();
        File::open(p)
            .and_then(|mut f| f.read_to_end(&mut text))
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        Ok(mountinfo::parse(&text).mounts)
    };
    let own_root = std::fs::canonicalize(&paths.kubelet_root)
        .map_err(|e| format!("cannot resolve the kubelet root {}: {e}", paths.kubelet_root.display()))?;
    let theirs = mountinfo::resolve(&read(&paths.mountinfo)?, &paths.mountinfo_kubelet_root);
    let ours = mountinfo::resolve(&read(Path::new("/proc/self/mountinfo"))?, &own_root);
    match (theirs, ours) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (theirs, ours) => Err(format!(
            "the mount table {} does not show the kubelet root this agent reads: {} there is {}, {} here is {}; filesystem volumes cannot be seen and no attachment pod is judged handoff-safe (set --mountinfo-kubelet-root to the host path of --kubelet-root)",
            paths.mountinfo.display(),
            paths.mountinfo_kubelet_root.display(),
            describe(theirs),
            own_root.display(),
            describe(ours),
        )),
    }
}

fn describe(at: Option<(DevNum, std::path::PathBuf)>) -> String {
    at.map_or("not covered by any mount".into(), |(dev, path)| format!("{} on device {dev}", path.display()))
}

/// Follows the mount table: the kernel signals a change with `POLLPRI`.
pub struct MountTable {
    file: File,
    mount_root: PathBuf,
    sysfs: PathBuf,
    clock: Arc<SeqClock>,
    text: Vec<u8>,
}

impl MountTable {
    pub fn open(paths: &NodePaths, clock: Arc<SeqClock>) -> io::Result<Self> {
        Ok(MountTable {
            file: File::open(&paths.mountinfo)?,
            mount_root: paths.mountinfo_kubelet_root.clone(),
            sysfs: paths.sysfs.clone(),
            clock,
            text: Vec::new(),
        })
    }
}

impl Source for MountTable {
    const NAME: &'static str = "mountinfo";

    fn wait(&self) -> Wait<'_> {
        Wait::Ready(self.file.as_fd(), PollFlags::POLLPRI)
    }

    fn wake(&mut self, revents: PollFlags, tx: &Sender) -> Result<(), Stop> {
        // /proc/<pid>/mountinfo reports a change as POLLPRI|POLLERR. Anything else (a
        // FIFO's hang-up, say) would wake us forever: not a mount table; give up loudly.
        if !revents.intersects(PollFlags::POLLPRI | PollFlags::POLLERR) {
            return Err(Stop::Failed(io::Error::other(format!(
                "cannot follow the mount table: poll answered {revents:?}, not POLLPRI"
            ))));
        }
        let received = Instant::now();
        let seq = self.clock.next();
        self.text.clear();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut self.text)?;
        let (mounts, malformed) = relevant(&self.text, &self.mount_root);
        if malformed > 0 {
            tracing::warn!(malformed, "mount table has lines that do not parse; skipped");
        }
        let mut obs = sysfs::observe_devices(&self.sysfs, seq, mounts.values().copied());
        obs.push(Observation::Mounts { seq, mounts });
        tx.send(Message::Observed { obs, source: SourceKind::Mountinfo, received, skipped: Vec::new() })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_mounts_in_the_kubelet_tree_and_the_top_one() {
        let text = b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
2 1 7:3 /disk.img /k/L/volumes/kubernetes.io~empty-dir/hotplug-disks/d.img rw - ext4 /dev/loop3 rw\n\
3 1 7:4 /disk.img /k/L/volumes/kubernetes.io~empty-dir/hotplug-disks/d.img rw - ext4 /dev/loop4 rw\n\
4 1 7:4 / /k/A/volumes/kubernetes.io~csi/pv/mount rw - ext4 /dev/loop4 rw\n\
garbage\n";
        let (m, bad) = relevant(text, Path::new("/k"));
        assert_eq!(bad, 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&MountSite::LauncherImage { pod: "L".into(), volume: "d".into() }], DevNum::new(7, 4));
        assert_eq!(
            m[&MountSite::PodVolume { pod: "A".into(), path: "kubernetes.io~csi/pv/mount".into() }],
            DevNum::new(7, 4)
        );
    }
}
