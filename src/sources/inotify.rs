//! Follows the kubelet tree with inotify: the pods directory, each pod's directories down
//! to `hotplug-disks`, and each volume directory under it. The watch set follows pods as
//! they come and go. A watch is always added *before* its directory is read, so nothing
//! created in between is missed (the order KubeVirt's device manager uses too).
//!
//! An event only marks its pod dirty; after each batch every dirty pod is read whole and
//! sent as one observation. A queue overflow re-walks the tree and asks for a rescan.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::health::Heartbeat;
use super::{sysfs, Message, NodePaths, RescanReason, Sender, SeqClock, SourceKind};
use crate::inventory::Observation;
use crate::layout::{KubeletLayout, PodDisks, PodUid, HOTPLUG_SUBPATH, MAX_ENTRIES};

/// What a watch descriptor watches.
#[derive(Clone, Debug)]
enum Watched {
    Root,
    /// A directory of this pod: the pod directory, one on the way to hotplug-disks,
    /// hotplug-disks itself or a volume directory in it.
    PodDir(PodUid),
}

pub fn spawn(
    paths: &NodePaths,
    tx: Sender,
    clock: Arc<SeqClock>,
    hb: Arc<Heartbeat>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let inotify = Inotify::init()?;
    let (layout, sysfs) = (paths.layout(), paths.sysfs.clone());
    std::thread::Builder::new().name("inotify".into()).spawn(move || {
        let _guard = hb.guard();
        let mut watcher = TreeWatcher { inotify, layout, sysfs, watched: HashMap::new(), tx, clock, hb };
        if let Err(e) = watcher.run() {
            tracing::error!(error = %e, "inotify source stopped");
        }
    })
}

struct TreeWatcher {
    inotify: Inotify,
    layout: KubeletLayout,
    sysfs: std::path::PathBuf,
    watched: HashMap<WatchDescriptor, Watched>,
    tx: Sender,
    clock: Arc<SeqClock>,
    hb: Arc<Heartbeat>,
}

/// The engine hung up: the agent is shutting down.
struct Hangup;

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
    fn run(&mut self) -> io::Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            self.wait_for_root();
            self.watch_everything();
            if self.send(Message::Rescan(RescanReason::WatchesReady)).is_err() {
                return Ok(());
            }
            match self.follow(&mut buffer)? {
                Some(Hangup) => return Ok(()),
                None => {
                    tracing::warn!(root = %self.layout.root().display(), "kubelet pods directory went away; waiting for it");
                    if self.send(Message::Rescan(RescanReason::RootGone)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Blocks until the root can be watched. A node agent can start before the kubelet
    /// made its directory; waiting is cheap and says so once.
    fn wait_for_root(&mut self) {
        let mut delay = Duration::from_millis(100);
        let mut said = false;
        loop {
            // The configured root may be a symlink: follow it, as the layout does.
            match self.inotify.watches().add(self.layout.root(), mask() - WatchMask::DONT_FOLLOW) {
                Ok(wd) => {
                    self.watched.insert(wd, Watched::Root);
                    if said {
                        tracing::info!(root = %self.layout.root().display(), "kubelet pods directory appeared");
                    }
                    return;
                }
                Err(e) => {
                    if !said {
                        tracing::warn!(root = %self.layout.root().display(), error = %e, "cannot watch the kubelet pods directory yet; retrying");
                        said = true;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn watch_everything(&mut self) {
        match self.layout.list_pods() {
            Ok((pods, _)) => {
                for uid in pods {
                    self.watch_pod(&uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list pods to watch"),
        }
    }

    /// Adds the watches for one pod, top down, each before its directory is looked into.
    fn watch_pod(&mut self, uid: &str) {
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
        // Volume directories inside hotplug-disks: an attachment pod's `<volume>/<pvcUID>`.
        // As many as the reader reads (a tenant's emptyDir may hold any number): watches
        // come out of the node's inotify quota.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.take(MAX_ENTRIES).flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.watch(&entry.path(), uid);
            }
        }
    }

    fn watch(&mut self, path: &Path, uid: &str) -> bool {
        match self.inotify.watches().add(path, mask()) {
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

    /// Reads events until the root goes away (`Ok(None)`) or the engine hangs up.
    fn follow(&mut self, buffer: &mut [u8]) -> io::Result<Option<Hangup>> {
        loop {
            self.hb.idle();
            let events = match self.inotify.read_events_blocking(buffer) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.hb.busy();
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
                return Ok(None);
            }
            if overflow {
                tracing::warn!("inotify queue overflowed; events were lost, re-watching and rescanning");
                self.watch_everything();
                if self.send(Message::Rescan(RescanReason::InotifyOverflow)).is_err() {
                    return Ok(Some(Hangup));
                }
                continue;
            }
            for uid in dirty {
                let received = Instant::now();
                self.watch_pod(&uid);
                let seq = self.clock.next();
                let scan = self.layout.scan_pod(&uid);
                let mut obs = sysfs::observe_devices(&self.sysfs, seq, scan.disks.iter().flat_map(PodDisks::devices));
                obs.push(Observation::Pod { seq, uid: scan.uid, disks: scan.disks, unreadable: scan.unreadable });
                let msg = Message::Observed { obs, source: SourceKind::Inotify, received, skipped: scan.skipped };
                if self.send(msg).is_err() {
                    return Ok(Some(Hangup));
                }
            }
        }
    }

    fn forget_all_watches(&mut self) {
        for (wd, _) in self.watched.drain() {
            let _ = self.inotify.watches().remove(wd);
        }
    }

    fn send(&self, msg: Message) -> Result<(), Hangup> {
        self.tx.send(msg).map_err(|_| Hangup)
    }
}
