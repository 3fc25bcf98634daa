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
use crate::snapshot::Snapshots;
use crate::sources::health::Health;
use crate::sources::{RescanReason, SourceKind};
use crate::verdict::{ConditionStatus, VolumeKey, VolumeState};

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
    pub registry: Registry,
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
        registry.register_collector(Box::new(VerdictGauges(snapshots)));
        registry.register_collector(Box::new(AgentGauges(health)));
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

    /// OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus
    /// text format 0.0.4 (what curl, promtool and older scrapers read).
    pub fn encode(&self, format: Exposition) -> String {
        let mut out = String::new();
        match format {
            Exposition::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.registry),
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        }
        .expect("encoding to a String cannot fail");
        out
    }
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

/// Renders the per-volume and per-attachment-pod gauges from the latest snapshot.
#[derive(Debug)]
struct VerdictGauges(Snapshots);

impl Collector for VerdictGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A pointer copy: the engine is never held up by a scrape.
        let p = self.0.borrow().clone();
        let mut m = encoder.encode_descriptor(
            "volume_device_present",
            "1 when the launcher's node or mount for the volume points at a device that exists",
            None,
            MetricType::Gauge,
        )?;
        for (key, v) in p.verdicts.volumes.iter().take(MAX_EXPORTED_VOLUMES) {
            ConstGauge::new(i64::from(v.state.device_present()))
                .encode(m.encode_family(&volume_labels(&p.names, key))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "volume_state",
            "1 for the volume's current state (pending, ready, vanished, unbacked), 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (key, v) in p.verdicts.volumes.iter().take(MAX_EXPORTED_VOLUMES) {
            let l = volume_labels(&p.names, key);
            for state in VolumeState::ALL {
                let labels = VolumeStateLabels { volume: l.clone(), state: state.as_str() };
                ConstGauge::new(i64::from(v.state == state)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "volume_unplugging",
            "1 when the volume has left its VMI's spec (cluster mode): an unplug is under way and its device going away is expected",
            None,
            MetricType::Gauge,
        )?;
        for (key, v) in p.verdicts.volumes.iter().take(MAX_EXPORTED_VOLUMES) {
            ConstGauge::new(i64::from(v.in_spec == Some(false)))
                .encode(m.encode_family(&volume_labels(&p.names, key))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "attachment_pod_superseded",
            "1 when another attachment pod of the same launcher is meant to replace this one (a swap is under way)",
            None,
            MetricType::Gauge,
        )?;
        for (uid, a) in &p.verdicts.attachment_pods {
            ConstGauge::new(i64::from(a.superseded)).encode(m.encode_family(&pod_labels(&p.names, uid))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "attachment_pod_handoff_safe",
            "1 when deleting this attachment pod now leaves every launcher device it serves served by another pod",
            None,
            MetricType::Gauge,
        )?;
        for (uid, a) in &p.verdicts.attachment_pods {
            ConstGauge::new(i64::from(a.handoff_safe())).encode(m.encode_family(&pod_labels(&p.names, uid))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "attachment_pod_handoff_unknown",
            "1 when the agent cannot tell whether deleting this attachment pod is safe (HandoffSafe=Unknown: a read error, a launcher the API does not confirm, a filesystem volume pending, ...)",
            None,
            MetricType::Gauge,
        )?;
        for (uid, a) in &p.verdicts.attachment_pods {
            let unknown = a.handoff.status() == ConditionStatus::Unknown;
            ConstGauge::new(i64::from(unknown)).encode(m.encode_family(&pod_labels(&p.names, uid))?)?;
        }
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
