//! Follows the kubelet tree with inotify: the pods directory, each pod's directories down
//! to `hotplug-disks`, and each volume directory under it. The watch set follows pods as
//! they come and go. A watch is always added *before* its directory is read, so nothing
//! created in between is missed (the order KubeVirt's device manager uses too).
//!
//! The tree is walked once: each pod is read right after its watches are placed (the
//! reader asks for each through [`BeforeReading`]). At start, and after a queue overflow,
//! the walk reads every pod, with the devices and the mount table, as the engine's full
//! rescan would, and sends that read. An event only marks its pod dirty; after each batch
//! every dirty pod is read whole (its watches renewed) and sent as one observation.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::PollFlags;

use super::runner::{Source, Stop, Wait};
use super::{read_node_with, sysfs, Message, NodePaths, RescanReason, Sender, SeqClock, SourceKind};
use crate::inventory::Observation;
use crate::layout::{BeforeReading, KubeletLayout, PodDisks, PodUid, HOTPLUG_SUBPATH};

/// What a watch descriptor watches.
#[derive(Clone, Debug)]
enum Watched {
    Root,
    /// A directory of this pod: the pod directory, one on the way to hotplug-disks,
    /// hotplug-disks itself or a volume directory in it.
    PodDir(PodUid),
}

/// Whether the kubelet root is watched. A node agent can start before the kubelet made
/// its directory, and the directory can go: then it is waited for, with backoff, said
/// once in the log.
enum Root {
    Waiting { retry_in: Duration, said: bool },
    Watched,
}

pub struct TreeWatcher {
    inotify: Inotify,
    paths: NodePaths,
    layout: KubeletLayout,
    watched: HashMap<WatchDescriptor, Watched>,
    root: Root,
    clock: Arc<SeqClock>,
    buffer: Vec<u8>,
}

impl TreeWatcher {
    pub fn open(paths: &NodePaths, clock: Arc<SeqClock>) -> io::Result<Self> {
        Ok(TreeWatcher {
            inotify: Inotify::init()?,
            paths: paths.clone(),
            layout: paths.layout(),
            watched: HashMap::new(),
            root: Root::Waiting { retry_in: Duration::ZERO, said: false },
            clock,
            buffer: vec![0u8; 64 * 1024],
        })
    }
}

impl Source for TreeWatcher {
    const NAME: &'static str = "inotify";

    fn wait(&self) -> Wait<'_> {
        match self.root {
            Root::Waiting { retry_in, .. } => Wait::Delay(retry_in),
            Root::Watched => Wait::Ready(self.inotify.as_fd(), PollFlags::POLLIN),
        }
    }

    fn wake(&mut self, _: PollFlags, tx: &Sender) -> Result<(), Stop> {
        match self.root {
            Root::Waiting { retry_in, said } => self.watch_root(retry_in, said, tx),
            Root::Watched => self.read_events(tx),
        }
    }
}

fn mask() -> WatchMask {
    // ATTRIB: a permission change can make a directory readable again (or not): the
    // pod is read again, and an unreadable one is never left standing on old news.
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

impl TreeWatcher {
    /// Watches the root, then everything under it, and asks for the rescan that the watch
    /// set makes safe; or tries again later.
    fn watch_root(&mut self, retry_in: Duration, said: bool, tx: &Sender) -> Result<(), Stop> {
        // The configured root may be a symlink: follow it, as the layout does.
        match self.inotify.watches().add(self.layout.root(), mask() - WatchMask::DONT_FOLLOW) {
            Ok(wd) => {
                self.watched.insert(wd, Watched::Root);
                if said {
                    tracing::info!(root = %self.layout.root().display(), "kubelet pods directory appeared");
                }
                self.root = Root::Watched;
                self.walk(RescanReason::WatchesReady, tx)?;
            }
            Err(e) => {
                if !said {
                    tracing::warn!(root = %self.layout.root().display(), error = %e, "cannot watch the kubelet pods directory yet; retrying");
                }
                let retry_in = (retry_in * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                self.root = Root::Waiting { retry_in, said: true };
            }
        }
        Ok(())
    }

    /// Watches every pod and reads each right after, with the devices and the mount table:
    /// a full read for the engine. Its `seq` is taken before the first watch; the engine
    /// applies it as its own rescan.
    fn walk(&mut self, reason: RescanReason, tx: &Sender) -> Result<(), Stop> {
        let started = Instant::now();
        let seq = self.clock.next();
        // The two threads of the read place watches alike.
        let (mut mine, mut theirs) = (self.watches(), self.watches());
        let read = read_node_with(&self.paths, seq, [&mut mine, &mut theirs]);
        self.watched.extend(mine.watched.into_iter().chain(theirs.watched));
        tx.send(Message::Scanned { reason, read: Box::new(read), started })?;
        Ok(())
    }

    /// Reads the events queued; each pod they touch is read again whole.
    fn read_events(&mut self, tx: &Sender) -> Result<(), Stop> {
        let events = match self.inotify.read_events(&mut self.buffer) {
            Ok(ev) => ev,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dirty: BTreeSet<PodUid> = BTreeSet::new();
        let (mut overflow, mut root_gone) = (false, false);
        let mut ignored = Vec::new();
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                overflow = true;
                continue;
            }
            let watched = self.watched.get(&ev.wd).cloned();
            if ev.mask.contains(EventMask::IGNORED) {
                ignored.push(ev.wd.clone());
            }
            match watched {
                Some(Watched::Root) => {
                    if ev.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
                        root_gone = true;
                    } else if let Some(name) = ev.name.and_then(|n| n.to_str()) {
                        dirty.insert(name.into());
                    }
                }
                Some(Watched::PodDir(uid)) => {
                    dirty.insert(uid);
                }
                None => {}
            }
        }
        for wd in ignored {
            self.watched.remove(&wd);
        }
        if root_gone {
            self.forget_all_watches();
            tracing::warn!(root = %self.layout.root().display(), "kubelet pods directory went away; waiting for it");
            self.root = Root::Waiting { retry_in: Duration::ZERO, said: false };
            tx.send(Message::Rescan(RescanReason::RootGone))?;
            return Ok(());
        }
        if overflow {
            tracing::warn!("inotify queue overflowed; events were lost, re-watching and rescanning");
            return self.walk(RescanReason::InotifyOverflow, tx);
        }
        for uid in dirty {
            let received = Instant::now();
            let seq = self.clock.next();
            let mut watches = self.watches();
            let scan = self.layout.scan_pod_with(&uid, &mut watches);
            self.watched.extend(watches.watched);
            let mut obs = sysfs::observe_devices(&self.paths.sysfs, seq, scan.disks.iter().flat_map(PodDisks::devices));
            obs.push(Observation::Pod { seq, uid: scan.uid, disks: scan.disks, unreadable: scan.unreadable });
            tx.send(Message::Observed { obs, source: SourceKind::Inotify, received, skipped: scan.skipped })?;
        }
        Ok(())
    }

    /// Places watches as a read asks, to be added to `watched` after it.
    fn watches(&self) -> Watches<'_> {
        Watches { inotify: self.inotify.watches(), watched: HashMap::new(), layout: &self.layout }
    }

    fn forget_all_watches(&mut self) {
        for (wd, _) in self.watched.drain() {
            let _ = self.inotify.watches().remove(wd);
        }
    }
}

/// Places the watches a pod read asks for ([`BeforeReading`]): the pod directory and those
/// down to hotplug-disks, top down, then each volume directory in it. Threads of one read
/// each have their own; what they placed joins the watcher's map after the read.
struct Watches<'a> {
    inotify: inotify::Watches,
    watched: HashMap<WatchDescriptor, Watched>,
    layout: &'a KubeletLayout,
}

impl BeforeReading for Watches<'_> {
    fn pod(&mut self, uid: &str) {
        let mut dir = self.layout.pod_dir(uid);
        if !self.watch(&dir, uid) {
            return;
        }
        for component in HOTPLUG_SUBPATH {
            dir.push(component);
            if !self.watch(&dir, uid) {
                return;
            }
        }
    }

    /// An attachment pod's `<volume>/`, holding the PVC's node. The reader reads at most
    /// `MAX_ENTRIES` entries of hotplug-disks (a tenant's emptyDir may hold any number):
    /// watches come out of the node's inotify quota.
    fn volume_dir(&mut self, uid: &str, path: &Path) {
        self.watch(path, uid);
    }
}

impl Watches<'_> {
    fn watch(&mut self, path: &Path, uid: &str) -> bool {
        match self.inotify.add(path, mask()) {
            Ok(wd) => {
                self.watched.insert(wd, Watched::PodDir(uid.into()));
                true
            }
            // Absent is normal (not a hotplug pod, or it went away); a symlink or a file
            // gives ENOTDIR because of DONT_FOLLOW|ONLYDIR; the scan reports those.
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ENOTDIR)) => false,
            Err(e) => {
                // ENOSPC: out of watches (fs.inotify.max_user_watches). Periodic rescans
                // still see the pod; say so, do not stop.
                tracing::warn!(path = %path.display(), error = %e, "cannot watch directory; relying on periodic rescans for it");
                false
            }
        }
    }
}
