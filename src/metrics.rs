//! Prometheus metrics (OpenMetrics text). Gauges about volumes and attachment pods are
//! rendered at scrape time from the latest verdicts, so a volume that went away has no
//! stale series; counters and histograms are updated by the engine on transitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::client::Verb;
use crate::cluster::events;
use crate::cluster::outcome::{EventResult, WriteKind, WriteResult};
use crate::layout::{PodUid, SkipReason};
use crate::report::PodNames;
use crate::snapshot::{Snapshot, Snapshots};
use crate::sources::health::Health;
use crate::sources::{RescanReason, SourceKind};
use crate::verdict::{AttachmentVerdict, ConditionStatus, VolumeKey, VolumeState, VolumeVerdict};

pub const PREFIX: &str = "hotplug_watchdog";

/// The most volumes with per-volume series on one node (each has 8): a scrape stays
/// bounded whatever the kubelet tree holds. Far above what a node runs (5,000 volumes were
/// benchmarked); beyond it `volumes_not_exported` says how many are missing.
pub const MAX_EXPORTED_VOLUMES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, serde::Serialize)]
pub struct VolumeLabels {
    pub pod_uid: String,
    pub volume: String,
    pub namespace: String,
    pub vmi: String,
    /// The launcher pod's name.
    pub pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeStateLabels {
    #[prometheus(flatten)]
    volume: VolumeLabels,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod_uid: String,
    namespace: String,
    vmi: String,
    pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    verb: &'static str,
}

impl VerbLabel {
    pub fn new(verb: Verb) -> Self {
        VerbLabel { verb: verb.label() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    reason: &'static str,
    result: &'static str,
}

impl EventLabels {
    pub fn new(reason: &'static str, result: EventResult) -> Self {
        EventLabels { reason, result: result.label() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    kind: &'static str,
    result: &'static str,
}

impl WriteLabels {
    pub fn new(kind: WriteKind, result: WriteResult) -> Self {
        WriteLabels { kind: kind.label(), result: result.label() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// The labels of a volume's series: its launcher pod and the names the API gives it.
pub fn volume_labels(names: &BTreeMap<PodUid, PodNames>, key: &VolumeKey) -> VolumeLabels {
    let n = names.get(&key.launcher).cloned().unwrap_or_default();
    VolumeLabels {
        pod_uid: key.launcher.to_string(),
        volume: key.volume.clone(),
        namespace: n.namespace.unwrap_or_default(),
        vmi: n.vmi.unwrap_or_default(),
        pod: n.pod.unwrap_or_default(),
    }
}

fn pod_labels(names: &BTreeMap<PodUid, PodNames>, uid: &PodUid) -> PodLabels {
    let n = names.get(uid).cloned().unwrap_or_default();
    PodLabels {
        pod_uid: uid.to_string(),
        namespace: n.namespace.unwrap_or_default(),
        vmi: n.vmi.unwrap_or_default(),
        pod: n.pod.unwrap_or_default(),
    }
}

pub struct Metrics {
    /// Everything but the per-volume and per-pod gauges and the agent's own (`tail`).
    pub registry: Registry,
    /// Written after the verdict gauges: the order of the exposition stays what it was.
    tail: Registry,
    snapshots: Snapshots,
    pub vanished_total: Family<VolumeLabels, Counter>,
    pub replaced_total: Family<VolumeLabels, Counter>,
    pub io_errors_total: Family<VolumeLabels, Counter>,
    pub kmsg_lost_total: Counter,
    pub transitions_total: Family<StateLabel, Counter>,
    pub detection_latency: Family<StateLabel, Histogram>,
    pub time_to_ready: Histogram,
    pub rescans_total: Family<ReasonLabel, Counter>,
    pub source_events_total: Family<SourceLabel, Counter>,
    pub skipped_entries: Family<ReasonLabel, Gauge>,
    pub scan_duration: Histogram,
    pub api_requests_total: Family<VerbLabel, Counter>,
    pub events_total: Family<EventLabels, Counter>,
    pub status_writes_total: Family<WriteLabels, Counter>,
    pub http_connections_refused_total: Counter,
    pub status_writes_failing: Family<KindLabel, Gauge>,
}

impl Metrics {
    pub fn new(snapshots: Snapshots, health: Arc<Health>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let vanished_total = Family::<VolumeLabels, Counter>::default();
        registry.register(
            "device_vanished",
            "Times a hotplug volume's device disappeared while the launcher still had its node or mount",
            vanished_total.clone(),
        );
        let replaced_total = Family::<VolumeLabels, Counter>::default();
        registry.register(
            "device_replaced",
            "Times a hotplug volume's device number came to belong to a different disk (a new diskseq) under the launcher",
            replaced_total.clone(),
        );
        let io_errors_total = Family::<VolumeLabels, Counter>::default();
        registry.register(
            "volume_io_errors",
            "Block-layer I/O errors the kernel logged for the volume's device",
            io_errors_total.clone(),
        );
        let http_connections_refused_total = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because the agent already served its limit of connections",
            http_connections_refused_total.clone(),
        );
        let kmsg_lost_total = Counter::default();
        registry.register(
            "kmsg_lost_records",
            "Kernel log records overwritten before the agent read them (errors among them are not counted)",
            kmsg_lost_total.clone(),
        );
        let transitions_total = Family::<StateLabel, Counter>::default();
        registry.register(
            "volume_transitions",
            "Volume state transitions, by the state entered",
            transitions_total.clone(),
        );
        let detection_latency = Family::<StateLabel, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~3 s: event to published verdict.
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 3.0])
        });
        registry.register(
            "detection_latency_seconds",
            "From a source receiving the first event of a batch to the resulting state change being published, by state entered",
            detection_latency.clone(),
        );
        let time_to_ready = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]);
        registry.register(
            "volume_time_to_ready_seconds",
            "From a volume first seen pending to it being ready",
            time_to_ready.clone(),
        );
        let rescans_total = Family::<ReasonLabel, Counter>::default();
        registry.register("rescans", "Full rescans of the node, by reason", rescans_total.clone());
        let source_events_total = Family::<SourceLabel, Counter>::default();
        registry.register("source_events", "Observations received from each source", source_events_total.clone());
        let skipped_entries = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "skipped_entries",
            "Entries in the kubelet tree that do not fit the hotplug layout and are passed over, by reason",
            skipped_entries.clone(),
        );
        let scan_duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register("rescan_duration_seconds", "Time to read the whole node once", scan_duration.clone());
        let api_requests_total = Family::<VerbLabel, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb (watch counts each watch opened)",
            api_requests_total.clone(),
        );
        let events_total = Family::<EventLabels, Counter>::default();
        registry.register("events", "Kubernetes Events recorded on VMIs, by reason and result", events_total.clone());
        let status_writes_total = Family::<WriteLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Writes to cluster objects, by kind (lease, pod_conditions, vmi_volume_status) and result",
            status_writes_total.clone(),
        );
        for kind in WriteKind::ALL {
            for result in WriteResult::ALL {
                status_writes_total.get_or_create(&WriteLabels::new(kind, result)).inc_by(0);
            }
        }
        let status_writes_failing = Family::<KindLabel, Gauge>::default();
        registry.register(
            "status_writes_failing",
            "1 while writes of this kind (lease, pod_conditions) are refused or failing: /readyz fails and names the kind until they succeed again",
            status_writes_failing.clone(),
        );
        for kind in WriteKind::TRUSTED {
            status_writes_failing.get_or_create(&KindLabel { kind: kind.label() }).set(0);
        }
        // The verdict gauges come between the two registries, written chunk by chunk
        // (`Scrape`).
        let mut tail = Registry::with_prefix(PREFIX);
        tail.register_collector(Box::new(AgentGauges(health)));
        // Every bounded series exists from the start, at zero: rate() and alerts need no
        // "absent" special case.
        for state in VolumeState::ALL.map(VolumeState::as_str) {
            transitions_total.get_or_create(&StateLabel { state }).inc_by(0);
            drop(detection_latency.get_or_create(&StateLabel { state }));
        }
        for reason in RescanReason::ALL.map(RescanReason::metric_label) {
            rescans_total.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
        for source in SourceKind::ALL.map(SourceKind::metric_label) {
            source_events_total.get_or_create(&SourceLabel { source }).inc_by(0);
        }
        for reason in SkipReason::METRIC_LABELS {
            skipped_entries.get_or_create(&ReasonLabel { reason }).set(0);
        }
        for verb in Verb::ALL {
            api_requests_total.get_or_create(&VerbLabel::new(verb)).inc_by(0);
        }
        for reason in events::reasons() {
            for result in EventResult::ALL {
                events_total.get_or_create(&EventLabels::new(reason, result)).inc_by(0);
            }
        }
        Metrics {
            registry,
            tail,
            snapshots,
            vanished_total,
            replaced_total,
            io_errors_total,
            kmsg_lost_total,
            transitions_total,
            detection_latency,
            time_to_ready,
            rescans_total,
            source_events_total,
            skipped_entries,
            scan_duration,
            api_requests_total,
            events_total,
            status_writes_total,
            http_connections_refused_total,
            status_writes_failing,
        }
    }

    /// The `status_writes_failing` gauge of one kind of write.
    pub fn writes_failing(&self, kind: WriteKind) -> Gauge {
        self.status_writes_failing.get_or_create(&KindLabel { kind: kind.label() }).clone()
    }

    /// The whole exposition in one string (tests, small nodes); `/metrics` sends
    /// [`Metrics::scrape`] chunk by chunk instead.
    pub fn encode(self: &Arc<Self>, format: Exposition) -> String {
        self.scrape(format).collect()
    }

    /// The exposition in chunks of at most [`CHUNK`] volumes or pods each, made as they
    /// are sent, all from one snapshot. OpenMetrics when the scraper asks for it
    /// (Prometheus does), else the Prometheus text format 0.0.4 (what curl, promtool and
    /// older scrapers read).
    pub fn scrape(self: &Arc<Self>, format: Exposition) -> Scrape {
        self.scrape_in_chunks_of(format, CHUNK)
    }

    fn scrape_in_chunks_of(self: &Arc<Self>, format: Exposition, chunk: usize) -> Scrape {
        let snapshot = self.snapshots.borrow().clone();
        Scrape { metrics: self.clone(), format, snapshot, chunk, next: Next::Head }
    }
}

/// Volumes (or attachment pods) per chunk of `/metrics`. A node of 5,000 volumes has some
/// 35,000 per-volume lines, 6 MB of text: written into one string, it was 8.4 MB of the
/// agent's 21 MB heap peak (measured with heaptrack); a chunk is about 100 KB.
pub const CHUNK: usize = 500;

/// One scrape under way: an iterator of text chunks.
pub struct Scrape {
    metrics: Arc<Metrics>,
    format: Exposition,
    snapshot: Arc<Snapshot>,
    chunk: usize,
    next: Next,
}

enum Next {
    Head,
    Verdicts { section: usize, from: usize },
    Done,
}

impl Iterator for Scrape {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        match self.next {
            Next::Head => {
                self.next = Next::Verdicts { section: 0, from: 0 };
                Some(without_eof(encode(&self.metrics.registry, self.format)))
            }
            Next::Verdicts { section, from } => {
                let Some(&which) = Section::ALL.get(section) else {
                    self.next = Next::Done;
                    return Some(encode(&self.metrics.tail, self.format));
                };
                let len = which.len(&self.snapshot);
                let to = from.saturating_add(self.chunk).min(len);
                self.next = if to < len {
                    Next::Verdicts { section, from: to }
                } else {
                    Next::Verdicts { section: section + 1, from: 0 }
                };
                let mut registry = Registry::with_prefix(PREFIX);
                let slice = VerdictSlice { snapshot: self.snapshot.clone(), section: which, items: from..to };
                registry.register_collector(Box::new(slice));
                let text = without_eof(encode(&registry, self.format));
                // A family's later chunks continue its samples: its HELP and TYPE once.
                Some(if from == 0 { text } else { without_descriptor(text) })
            }
            Next::Done => None,
        }
    }
}

fn encode(registry: &Registry, format: Exposition) -> String {
    let mut out = String::new();
    match format {
        Exposition::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Exposition::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
    }
    .expect("encoding to a String cannot fail");
    out
}

/// OpenMetrics ends with `# EOF`: only the last chunk keeps it.
fn without_eof(mut text: String) -> String {
    if text.ends_with("# EOF\n") {
        text.truncate(text.len() - "# EOF\n".len());
    }
    text
}

/// Drops the leading `# HELP`/`# TYPE` lines (no sample line starts with `#`).
fn without_descriptor(text: String) -> String {
    let mut rest = text.as_str();
    while rest.starts_with("# ") {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    PrometheusText,
}

impl Exposition {
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Exposition::OpenMetrics,
            _ => Exposition::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The families of per-volume and per-attachment-pod gauges, in the order they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    DevicePresent,
    State,
    Unplugging,
    Superseded,
    HandoffSafe,
    HandoffUnknown,
    /// The node's two totals.
    Totals,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::DevicePresent,
        Section::State,
        Section::Unplugging,
        Section::Superseded,
        Section::HandoffSafe,
        Section::HandoffUnknown,
        Section::Totals,
    ];

    /// How many volumes, pods or totals the family covers.
    fn len(self, p: &Snapshot) -> usize {
        match self {
            Section::DevicePresent | Section::State | Section::Unplugging => {
                p.verdicts.volumes.len().min(MAX_EXPORTED_VOLUMES)
            }
            Section::Superseded | Section::HandoffSafe | Section::HandoffUnknown => p.verdicts.attachment_pods.len(),
            Section::Totals => 1,
        }
    }
}

/// Renders items `items` of one family of gauges from a snapshot.
#[derive(Debug)]
struct VerdictSlice {
    snapshot: Arc<Snapshot>,
    section: Section,
    items: std::ops::Range<usize>,
}

impl Collector for VerdictSlice {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.snapshot;
        let (skip, take) = (self.items.start, self.items.len());
        let volumes = || p.verdicts.volumes.iter().skip(skip).take(take);
        let pods = || p.verdicts.attachment_pods.iter().skip(skip).take(take);
        // One 0/1 gauge per volume, or per attachment pod, of the slice.
        let mut per_volume = |name, help, value: fn(&VolumeVerdict) -> bool| {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (key, v) in volumes() {
                ConstGauge::new(i64::from(value(v))).encode(m.encode_family(&volume_labels(&p.names, key))?)?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        match self.section {
            Section::DevicePresent => per_volume(
                "volume_device_present",
                "1 when the launcher's node or mount for the volume points at a device that exists",
                |v| v.state.device_present(),
            )?,
            Section::Unplugging => per_volume(
                "volume_unplugging",
                "1 when the volume has left its VMI's spec (cluster mode): an unplug is under way and its device going away is expected",
                |v| v.in_spec == Some(false),
            )?,
            Section::State => {
                let mut m = encoder.encode_descriptor(
                    "volume_state",
                    "1 for the volume's current state (pending, ready, vanished, unbacked), 0 for the others",
                    None,
                    MetricType::Gauge,
                )?;
                for (key, v) in volumes() {
                    let l = volume_labels(&p.names, key);
                    for state in VolumeState::ALL {
                        let labels = VolumeStateLabels { volume: l.clone(), state: state.as_str() };
                        ConstGauge::new(i64::from(v.state == state)).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
            Section::Superseded | Section::HandoffSafe | Section::HandoffUnknown => {
                let (name, help, value): (_, _, fn(&AttachmentVerdict) -> bool) = match self.section {
                    Section::Superseded => (
                        "attachment_pod_superseded",
                        "1 when another attachment pod of the same launcher is meant to replace this one (a swap is under way)",
                        |a| a.superseded,
                    ),
                    Section::HandoffSafe => (
                        "attachment_pod_handoff_safe",
                        "1 when deleting this attachment pod now leaves every launcher device it serves served by another pod",
                        |a| a.handoff_safe(),
                    ),
                    _ => (
                        "attachment_pod_handoff_unknown",
                        "1 when the agent cannot tell whether deleting this attachment pod is safe (HandoffSafe=Unknown: a read error, a launcher the API does not confirm, a filesystem volume pending, ...)",
                        |a| a.handoff.status() == ConditionStatus::Unknown,
                    ),
                };
                let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (uid, a) in pods() {
                    ConstGauge::new(i64::from(value(a))).encode(m.encode_family(&pod_labels(&p.names, uid))?)?;
                }
            }
            Section::Totals => {
                let m = encoder.encode_descriptor(
                    "volumes_not_exported",
                    "Volumes judged but without per-volume series: more than the agent exports per node (10000)",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(p.verdicts.volumes.len().saturating_sub(MAX_EXPORTED_VOLUMES) as i64).encode(m)?;
                let m = encoder.encode_descriptor(
                    "unconfirmed_pod_directories",
                    "Pod directories with a hotplug-disks directory that the API does not confirm as this node's launcher or attachment pods (cluster mode); they decide nothing",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(p.verdicts.unconfirmed.len() as i64).encode(m)?;
            }
        }
        Ok(())
    }
}

/// The agent's own state: readiness (what `/readyz` answers) and build information.
#[derive(Debug)]
struct AgentGauges(Arc<Health>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

impl Collector for AgentGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = encoder.encode_descriptor(
            "ready",
            "1 when the agent is ready (/readyz): the node was read in full and, in cluster mode, the API watches are in sync",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.0.readiness().is_ok())).encode(m)?;
        let mut m =
            encoder.encode_descriptor("build_info", "Always 1; the agent's version", None, MetricType::Gauge)?;
        ConstGauge::new(1).encode(m.encode_family(&BuildLabels { version: env!("CARGO_PKG_VERSION") })?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{VolumeMode, VolumeState};
    use crate::verdict::{AttachmentVerdict, HandoffReason, Verdicts, VolumeVerdict};

    /// The chunks of a scrape, joined, are the exposition made in one piece: each family's
    /// HELP and TYPE once, its samples in order, and `# EOF` once at the end.
    #[test]
    fn a_scrape_in_chunks_is_the_exposition_in_one_piece() {
        let mut v = Verdicts::default();
        for i in 0..1234 {
            let key = VolumeKey { launcher: PodUid::from(format!("l{}", i % 7).as_str()), volume: format!("disk{i}") };
            let state = VolumeState::ALL[i % VolumeState::ALL.len()];
            let verdict = VolumeVerdict {
                mode: VolumeMode::Block,
                state,
                device: None,
                backing_pods: Default::default(),
                in_spec: Some(i % 3 != 0),
                disk: None,
            };
            v.volumes.insert(key, Arc::new(verdict));
        }
        for i in 0..601 {
            let pod = AttachmentVerdict {
                volumes: Default::default(),
                launcher: None,
                sole_backer_of: Default::default(),
                superseded: i % 2 == 0,
                devices: Default::default(),
                handoff: if i % 5 == 0 { HandoffReason::NoDeviceInUse } else { HandoffReason::SoleBacker },
            };
            v.attachment_pods.insert(PodUid::from(format!("a{i}").as_str()), Arc::new(pod));
        }
        let snapshot = Snapshot { verdicts: Arc::new(v), ..Default::default() };
        let (_tx, snapshots) = tokio::sync::watch::channel(Arc::new(snapshot));
        let metrics = Arc::new(Metrics::new(snapshots, Arc::new(Health::default())));
        for format in [Exposition::OpenMetrics, Exposition::PrometheusText] {
            let whole: Vec<String> = metrics.scrape_in_chunks_of(format, usize::MAX).collect();
            let chunks: Vec<String> = metrics.scrape_in_chunks_of(format, 100).collect();
            // The registry, each family, the agent's own gauges.
            assert_eq!(whole.len(), 1 + Section::ALL.len() + 1);
            assert_eq!(chunks.len(), 1 + 3 * 13 + 3 * 7 + 1 + 1);
            let (whole, chunks) = (whole.concat(), chunks.concat());
            assert_eq!(chunks, whole);
            assert_eq!(chunks.matches("# TYPE hotplug_watchdog_volume_state gauge").count(), 1);
            assert_eq!(chunks.matches("hotplug_watchdog_volume_state{").count(), 1234 * VolumeState::ALL.len());
            assert_eq!(chunks.matches("hotplug_watchdog_attachment_pod_handoff_safe{").count(), 601);
            let eofs = chunks.matches("# EOF").count();
            match format {
                Exposition::OpenMetrics => assert!(eofs == 1 && chunks.ends_with("# EOF\n")),
                Exposition::PrometheusText => assert_eq!(eofs, 0),
            }
        }
    }
}
