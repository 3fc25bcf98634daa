//! Kubernetes Events (events.k8s.io/v1) on the VMI for transitions a person should see.
//! The engine decides which transitions deserve one (only transitions, so never one per
//! rescan); this sink only writes them. kube's recorder folds repeats of the same event
//! into a series within minutes.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc::{self, Receiver};

use super::outcome::EventResult;
use super::view::VmiRef;
use crate::metrics::EventLabels;
use crate::notice::NoticeKind;

/// The Event the cluster side raises itself: a VMI volumeStatus write was refused or put
/// back (the engine's Events are the notices of [`NoticeKind`]).
pub const STATUS_WRITE_REJECTED: &str = "HotplugStatusWriteRejected";

/// Every Event reason the agent records: the `reason` label of `events_total`.
pub fn reasons() -> impl Iterator<Item = &'static str> {
    NoticeKind::ALL.map(NoticeKind::reason).into_iter().chain([STATUS_WRITE_REJECTED])
}

/// An Event the engine wants on a VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiEvent {
    pub vmi: VmiRef,
    pub warning: bool,
    /// PascalCase, e.g. `HotplugDeviceVanished`.
    pub reason: &'static str,
    pub note: String,
}

/// How many Events may wait for the API server.
const QUEUE: usize = 256;

/// Where notices go to become Events: a bounded queue, so that an API server that is slow
/// or gone never makes them pile up in memory. When it is full, an Event is dropped and
/// counted (`events_total{result="dropped"}`); the log has every notice anyway.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<VmiEvent>,
    counts: Family<EventLabels, Counter>,
}

impl EventSender {
    pub fn channel(counts: Family<EventLabels, Counter>) -> (Self, Receiver<VmiEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (EventSender { tx, counts }, rx)
    }

    /// Never waits: callable from the engine's thread and from async code alike.
    pub fn send(&self, ev: VmiEvent) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            self.counts.get_or_create(&EventLabels::new(ev.reason, EventResult::Dropped)).inc();
        }
    }
}

pub async fn run(client: Client, node: String, mut rx: Receiver<VmiEvent>, sent: Family<EventLabels, Counter>) {
    let recorder = Recorder::new(client, Reporter { controller: "hotplug-watchdog".into(), instance: Some(node) });
    while let Some(first) = rx.recv().await {
        // The same short wait as the status writes (see NEWS_WINDOW): the node's readers
        // first; what comes meanwhile goes out with it.
        tokio::time::sleep(super::status::NEWS_WINDOW).await;
        let mut next = Some(first);
        while let Some(ev) = next {
            publish(&recorder, ev, &sent).await;
            next = rx.try_recv().ok();
        }
    }
}

async fn publish(recorder: &Recorder, ev: VmiEvent, sent: &Family<EventLabels, Counter>) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("kubevirt.io/v1".into()),
        kind: Some("VirtualMachineInstance".into()),
        namespace: Some(ev.vmi.namespace.clone()),
        name: Some(ev.vmi.name.clone()),
        uid: Some(ev.vmi.uid.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: if ev.warning { EventType::Warning } else { EventType::Normal },
        reason: ev.reason.into(),
        note: Some(truncate(&ev.note, 1000)),
        action: "Observe".into(),
        secondary: None,
    };
    let result = match recorder.publish(&event, &reference).await {
        Ok(()) => EventResult::Sent,
        Err(e) => {
            tracing::warn!(vmi = %ev.vmi.name, namespace = %ev.vmi.namespace, reason = ev.reason, error = %e, "cannot record Event");
            EventResult::Failed
        }
    };
    sent.get_or_create(&EventLabels::new(ev.reason, result)).inc();
}

/// Events carry at most 1 kB of note.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
