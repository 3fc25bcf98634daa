//! The engine: one thread that owns the [`Inventory`], applies what the sources send, runs
//! full rescans, re-judges what each batch touched and publishes the result: one
//! [`Snapshot`] per batch for every reader, counters, logs, `/watch` lines and notices. It
//! decides nothing itself: `verdict::rejudge` does. It never reads back what it published.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::DevNum;
use crate::feed::Feed;
use crate::inventory::{Inventory, Observation};
use crate::layout::{PodUid, SkipReason, Skipped};
use crate::metrics::{volume_labels, Metrics, ReasonLabel, SourceLabel, StateLabel, VolumeLabels};
use crate::model::{ClusterView, VmiRef};
use crate::notice::{notices, Notice};
use crate::snapshot::Snapshot;
use crate::sources::channel::{Batch, Receiver};
use crate::sources::health::{Health, Heartbeat};
use crate::sources::{read_node, Message, NodePaths, NodeRead, ReadError, RescanReason, SeqClock, SourceKind};
use crate::verdict::{rejudge, Transitions, VolumeKey, VolumeState};

/// Takes a notice about a VMI the API knows; must not block (the cluster side queues it).
pub type NoticeSink = Box<dyn Fn(&VmiRef, Notice) + Send>;

pub struct Engine {
    paths: NodePaths,
    clock: Arc<SeqClock>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    rescan_interval: Duration,
    inventory: Inventory,
    /// What was last published, and where: readers see only whole snapshots.
    snapshot: Snapshot,
    snapshots: tokio::sync::watch::Sender<Arc<Snapshot>>,
    /// Something in `snapshot` changed since it was last sent.
    unsent: bool,
    /// Entries passed over, by path: replaced per pod on each read, wholly on a rescan,
    /// so that a bad entry is logged once, not at every rescan.
    skipped: BTreeMap<PathBuf, SkipReason>,
    skipped_changed: bool,
    pending_since: HashMap<VolumeKey, Instant>,
    scan_failure_logged: bool,
    /// Cluster mode: each launcher pod's VMI, and where Events go.
    vmis: BTreeMap<PodUid, VmiRef>,
    /// Cluster mode: where notices about a known VMI go (to become Events).
    notice_sink: Option<NoticeSink>,
    /// `/watch` readers.
    feed: Feed,
    /// Volumes that are gone, since when, and the labels of their counters: removed from
    /// the metrics after `gone_series_for`.
    gone: HashMap<VolumeKey, (Instant, VolumeLabels)>,
    gone_series_for: Duration,
    /// Said once that there are more volumes than series are exported for.
    said_too_many_volumes: bool,
}

impl Engine {
    pub fn new(
        paths: NodePaths,
        clock: Arc<SeqClock>,
        metrics: Arc<Metrics>,
        snapshots: tokio::sync::watch::Sender<Arc<Snapshot>>,
        health: Arc<Health>,
        rescan_interval: Duration,
    ) -> Self {
        Engine {
            paths,
            clock,
            metrics,
            health,
            rescan_interval,
            inventory: Inventory::default(),
            snapshot: Snapshot::default(),
            snapshots,
            unsent: false,
            skipped: BTreeMap::new(),
            skipped_changed: false,
            pending_since: HashMap::new(),
            scan_failure_logged: false,
            vmis: BTreeMap::new(),
            notice_sink: None,
            feed: Feed::default(),
            gone: HashMap::new(),
            gone_series_for: Duration::from_secs(600),
            said_too_many_volumes: false,
        }
    }

    /// How long a gone volume's counters stay exported.
    pub fn with_gone_series_for(mut self, keep: Duration) -> Self {
        self.gone_series_for = keep;
        self
    }

    /// Volume transitions also go to `/watch` readers.
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = feed;
        self
    }

    /// Cluster mode: notices also become Events on the VMI.
    pub fn with_notice_sink(mut self, sink: NoticeSink) -> Self {
        self.notice_sink = Some(sink);
        self
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver, hb: Arc<Heartbeat>) {
        let _guard = hb.guard();
        let mut next_rescan = Instant::now() + self.rescan_interval;
        loop {
            hb.idle();
            // Everything queued comes as one batch: one verdict computation per batch keeps a
            // burst of events cheap.
            let batch = match rx.recv_timeout(next_rescan.saturating_duration_since(Instant::now())) {
                Ok(batch) => batch,
                Err(RecvTimeoutError::Timeout) => Batch::of(Message::Rescan(RescanReason::Periodic)),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            hb.busy();
            let mut rescan: Option<RescanReason> = None;
            // Whether this batch read the whole node, and could.
            let mut scanned: Option<bool> = None;
            let mut earliest = Instant::now();
            for msg in batch {
                match msg {
                    Message::Observed { obs, source, received, mut skipped } => {
                        earliest = earliest.min(received);
                        self.metrics
                            .source_events_total
                            .get_or_create(&SourceLabel { source: source.metric_label() })
                            .inc();
                        for obs in obs {
                            if let Observation::Pod { uid, .. } = &obs {
                                let dir = self.paths.layout().pod_dir(uid);
                                self.replace_skipped(Some(&dir), std::mem::take(&mut skipped));
                            }
                            self.inventory.apply(obs);
                        }
                    }
                    // Several requests in one batch make one rescan.
                    Message::Rescan(reason) => {
                        rescan = Some(rescan.map_or(reason, |r| r.min(reason)));
                    }
                    Message::Scanned { reason, read, started } => {
                        scanned = Some(self.apply_read(reason, started, *read));
                    }
                    Message::Cluster(view) => self.apply_cluster(*view),
                    Message::IoError { device, received } => {
                        earliest = earliest.min(received);
                        self.count_io_error(device);
                    }
                    Message::KmsgLost(n) => {
                        self.metrics.kmsg_lost_total.inc_by(n);
                    }
                }
            }
            if let Some(reason) = rescan {
                scanned = Some(self.rescan(reason));
            }
            if scanned.is_some() {
                next_rescan = Instant::now() + self.rescan_interval;
            }
            self.publish(earliest);
            // After the `/watch` lines, on purpose: the snapshot wakes the condition
            // writers. When they shared the HTTP server's thread, sending it first delayed
            // the lines (p50 0.56 -> 5.70 ms at 5,000 volumes, measured); HTTP has a thread
            // of its own now, and the lines still go first.
            if std::mem::take(&mut self.unsent) {
                self.snapshots.send_replace(Arc::new(self.snapshot.clone()));
            }
            // Ready only once what the scan found is published.
            if let Some(ok) = scanned {
                self.health.set_ready(ok);
            }
        }
    }

    /// Counts a kernel I/O error against every volume whose device it is; errors on other
    /// devices are not ours to count.
    fn count_io_error(&mut self, device: DevNum) {
        self.metrics.source_events_total.get_or_create(&SourceLabel { source: SourceKind::Kmsg.metric_label() }).inc();
        let keys: Vec<VolumeKey> = self
            .snapshot
            .verdicts
            .volumes
            .iter()
            .filter(|(_, v)| v.device == Some(device))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            *self.snapshot.io_errors.entry(k.clone()).or_default() += 1;
            self.metrics.io_errors_total.get_or_create(&self.labels(&k)).inc();
            self.unsent = true;
        }
    }

    fn apply_cluster(&mut self, view: ClusterView) {
        self.inventory.apply(Observation::Cluster(view.facts));
        if *self.snapshot.names != view.names {
            self.snapshot.names = Arc::new(view.names);
            self.unsent = true;
        }
        self.vmis = view.vmis;
    }

    /// Reads the whole node; `false` when it could not.
    fn rescan(&mut self, reason: RescanReason) -> bool {
        let started = Instant::now();
        let seq = self.clock.next();
        let read = read_node(&self.paths, seq);
        self.apply_read(reason, started, read)
    }

    /// Applies a read of the whole node, the engine's own or a source's (begun at
    /// `started`); `false` when it could not read.
    fn apply_read(&mut self, reason: RescanReason, started: Instant, read: Result<NodeRead, ReadError>) -> bool {
        self.metrics.rescans_total.get_or_create(&ReasonLabel { reason: reason.metric_label() }).inc();
        match read {
            Ok(read) => {
                self.metrics.scan_duration.observe(started.elapsed().as_secs_f64());
                if read.malformed_mount_lines > 0 {
                    tracing::warn!(
                        lines = read.malformed_mount_lines,
                        "mount table lines that do not parse were skipped"
                    );
                }
                let took = read.took;
                self.replace_skipped(None, read.skipped);
                self.inventory.apply(Observation::FullScan(read.scan));
                self.check_mount_view();
                if !self.health.is_ready() {
                    tracing::info!(reason = reason.metric_label(), took = ?started.elapsed(), pods = ?took.pods, devices = ?took.devices, mounts = ?took.mounts, "first full scan done; ready");
                }
                self.scan_failure_logged = false;
                true
            }
            Err(e) => {
                // Keep the last picture: a rescan that could not read proves nothing.
                if !self.scan_failure_logged {
                    tracing::error!(error = %e, reason = reason.metric_label(), "full rescan failed; keeping the last verdicts and not ready");
                    self.scan_failure_logged = true;
                }
                false
            }
        }
    }

    /// The mount table must show the kubelet root read here, or filesystem volumes are
    /// invisible: then not ready, nothing judged handoff-safe, and said once. Checked with
    /// every full scan (the root may appear late, or a mount change mend it).
    fn check_mount_view(&mut self) {
        let result = crate::sources::mounts::check_view(&self.paths);
        if result.is_err() != self.inventory.mount_view_mismatch() {
            match &result {
                Err(e) => tracing::error!("{e}"),
                Ok(()) => tracing::info!("the mount table shows the kubelet root again"),
            }
        }
        self.inventory.set_mount_view_mismatch(result.is_err());
        self.health.set_unready(crate::sources::health::MOUNT_TABLE_READINESS, result.err());
    }

    /// Replaces the skipped entries under `dir` (all of them when `None`), logging new ones.
    fn replace_skipped(&mut self, dir: Option<&std::path::Path>, fresh: Vec<Skipped>) {
        let old = match dir {
            Some(dir) => {
                let under: Vec<PathBuf> = self
                    .skipped
                    .range(dir.to_path_buf()..)
                    .take_while(|(p, _)| p.starts_with(dir))
                    .map(|(p, _)| p.clone())
                    .collect();
                under.into_iter().filter_map(|p| self.skipped.remove_entry(&p)).collect()
            }
            None => std::mem::take(&mut self.skipped),
        };
        // Over-approximate: anything replaced means a recount at the end of the batch.
        self.skipped_changed |= !old.is_empty() || !fresh.is_empty();
        for s in fresh {
            if old.get(&s.path) != Some(&s.reason) {
                tracing::warn!(path = %s.path.display(), reason = %s.reason, "skipping entry that does not fit the hotplug layout");
            }
            self.skipped.insert(s.path, s.reason);
        }
    }

    /// Counts and lists the skipped entries for readers, once per batch.
    fn publish_skipped(&mut self) {
        if !std::mem::take(&mut self.skipped_changed) {
            return;
        }
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        for reason in self.skipped.values() {
            *counts.entry(reason.metric_label()).or_default() += 1;
        }
        for reason in SkipReason::METRIC_LABELS {
            let n = counts.get(reason).copied().unwrap_or(0);
            self.metrics.skipped_entries.get_or_create(&ReasonLabel { reason }).set(n);
        }
        self.snapshot.skipped = Arc::new(
            self.skipped.iter().map(|(path, reason)| Skipped { path: path.clone(), reason: *reason }).collect(),
        );
        self.unsent = true;
    }

    fn publish(&mut self, earliest: Instant) {
        self.publish_skipped();
        self.prune_gone();
        let touched = self.inventory.take_changes();
        let Some((new, changes)) = rejudge(&self.snapshot.verdicts, &self.inventory, &touched) else {
            return;
        };
        if new.volumes.len() > crate::metrics::MAX_EXPORTED_VOLUMES && !self.said_too_many_volumes {
            tracing::warn!(
                volumes = new.volumes.len(),
                exported = crate::metrics::MAX_EXPORTED_VOLUMES,
                "more volumes than the agent exports series for; the rest are judged but not exported (hotplug_watchdog_volumes_not_exported)"
            );
        }
        self.said_too_many_volumes = new.volumes.len() > crate::metrics::MAX_EXPORTED_VOLUMES;
        let old = std::mem::replace(&mut self.snapshot.verdicts, Arc::new(new));
        self.unsent = true;
        let latency = earliest.elapsed().as_secs_f64();
        // The first picture of the node is no news: one summary line, not a line per
        // volume (thousands on a big node).
        let initial = !old.full_scan && self.snapshot.verdicts.full_scan;
        if initial {
            self.summarize();
        }
        self.record(&changes, latency, initial);
        let names = self.snapshot.names.clone();
        let pod_name = |uid: &PodUid| names.get(uid).and_then(|n| n.pod.clone()).unwrap_or_else(|| uid.to_string());
        for n in notices(&old, &self.snapshot.verdicts, &changes, pod_name) {
            self.tell(n);
        }
    }

    fn labels(&self, key: &VolumeKey) -> VolumeLabels {
        volume_labels(&self.snapshot.names, key)
    }

    /// Removes the counter series of volumes gone for longer than `gone_series_for`: they
    /// no longer matter, and a node that churns volumes must not grow series for ever.
    fn prune_gone(&mut self) {
        let keep = self.gone_series_for;
        let expired: Vec<VolumeKey> =
            self.gone.iter().filter(|(_, (at, _))| at.elapsed() >= keep).map(|(k, _)| k.clone()).collect();
        if expired.is_empty() {
            return;
        }
        for k in expired {
            let Some((_, labels)) = self.gone.remove(&k) else { continue };
            self.metrics.vanished_total.remove(&labels);
            self.metrics.replaced_total.remove(&labels);
            self.metrics.io_errors_total.remove(&labels);
            if self.snapshot.io_errors.remove(&k).is_some() {
                self.unsent = true;
            }
        }
    }

    /// Says what the first full scan found, in one line.
    fn summarize(&self) {
        let v = &self.snapshot.verdicts;
        let mut states = BTreeMap::new();
        for (_, volume) in v.volumes.iter() {
            *states.entry(volume.state.as_str()).or_insert(0usize) += 1;
        }
        let unsafe_pods = v.attachment_pods.iter().filter(|(_, a)| !a.handoff_safe()).count();
        tracing::info!(
            volumes = v.volumes.len(),
            ?states,
            attachment_pods = v.attachment_pods.len(),
            not_handoff_safe = unsafe_pods,
            "the node's hotplug volumes as first read (each volume's state: /scan, or debug logs)"
        );
    }

    /// Metrics and logs for every transition; the first picture of the node is logged at
    /// debug level only (see `summarize`).
    fn record(&mut self, changes: &Transitions, latency: f64, initial: bool) {
        for t in &changes.volumes {
            let (k, from, to) = (&t.key, t.from.map(VolumeState::as_str), t.to.map(VolumeState::as_str));
            // The `/watch` line before the log line: a client waits on it, the log does not.
            let labels = self.labels(k);
            self.feed.publish(t, &labels);
            let device = t.device.map(|d| d.to_string());
            if initial {
                tracing::debug!(pod_uid = %k.launcher, volume = %k.volume, ?device, ?from, ?to, "hotplug volume state");
            } else {
                tracing::info!(pod_uid = %k.launcher, volume = %k.volume, ?device, ?from, ?to, "hotplug volume state");
            }
            let Some(state) = t.to else {
                self.pending_since.remove(k);
                self.gone.insert(k.clone(), (Instant::now(), labels));
                continue;
            };
            self.gone.remove(k);
            self.metrics.transitions_total.get_or_create(&StateLabel { state: state.as_str() }).inc();
            self.metrics.detection_latency.get_or_create(&StateLabel { state: state.as_str() }).observe(latency);
            match state {
                // An unplug in progress loses its device on purpose: not counted.
                VolumeState::Vanished if self.snapshot.verdicts.volumes[k].is_alarm() => {
                    self.metrics.vanished_total.get_or_create(&labels).inc();
                }
                VolumeState::Pending => {
                    self.pending_since.entry(k.clone()).or_insert_with(Instant::now);
                }
                VolumeState::Ready => {
                    if let Some(since) = self.pending_since.remove(k) {
                        self.metrics.time_to_ready.observe(since.elapsed().as_secs_f64());
                    }
                }
                VolumeState::Replaced if self.snapshot.verdicts.volumes[k].is_alarm() => {
                    self.metrics.replaced_total.get_or_create(&labels).inc();
                }
                VolumeState::Vanished | VolumeState::Unbacked | VolumeState::Replaced => {}
            }
        }
        for h in &changes.handoffs {
            if initial {
                tracing::debug!(pod_uid = %h.pod, from = ?h.from, to = ?h.to, "attachment pod handoff safety");
            } else {
                tracing::info!(pod_uid = %h.pod, from = ?h.from, to = ?h.to, "attachment pod handoff safety");
            }
        }
    }

    /// A notice goes to the log, and as an Event on the VMI when the VMI is known.
    fn tell(&self, n: Notice) {
        let vmi = self.vmis.get(&n.launcher);
        let (namespace, name) = (vmi.map(|v| v.namespace.as_str()), vmi.map(|v| v.name.as_str()));
        if n.kind.is_warning() {
            tracing::warn!(reason = n.kind.reason(), launcher_pod_uid = %n.launcher, ?namespace, vmi = ?name, "{}", n.message);
        } else {
            tracing::info!(reason = n.kind.reason(), launcher_pod_uid = %n.launcher, ?namespace, vmi = ?name, "{}", n.message);
        }
        if let (Some(sink), Some(vmi)) = (&self.notice_sink, vmi) {
            sink(vmi, n);
        }
    }
}
