//! Writes the attachment-pod conditions decided in [`super::conditions`] and the VMI
//! volumeStatus words decided in [`super::volume_status`], on a task of their own ([`run`]):
//! it is fed the newest verdicts and the newest watched objects, and writes different
//! objects concurrently, so that neither a slow API server nor a burst of writes stalls the
//! watches or the engine. Discipline, per object:
//! a write only where its status differs from what it should say (so none in a steady
//! state, and stale ones are corrected at start); changes of cluster objects within a short
//! window make one write, the node's news is written a few milliseconds after it is
//! published ([`NEWS_WINDOW`]); at most one write per object per second, and one at a
//! time; a failed write is retried with a jittered, growing delay; a write is not repeated
//! before the watch has had time to show it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::conditions::{patch, Desired};
use super::events::{EventSender, VmiEvent, STATUS_WRITE_REJECTED};
use super::outcome::{error_text, WriteKind, WriteResult};
use super::volume_status::{self, Expectation};
use super::write_health::WriteHealth;
use super::Observed;
use crate::backoff::Backoff;
use crate::metrics::WriteLabels;
use crate::model::{ClusterView, PodUid, VmiRef};
use crate::snapshot::Snapshots;
use crate::verdict::Verdicts;

/// Changes of cluster objects within this window make one write.
pub const COALESCE: Duration = Duration::from_millis(200);
/// New verdicts are written after this short wait: the uevents of one change arrive within
/// it (a device and its partitions, a swap's remove and add) and make one write, and the
/// node's own readers (`/watch`, `/metrics`) are served before the API round trips start
/// competing with them for the CPU.
pub const NEWS_WINDOW: Duration = Duration::from_millis(5);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long a write may take to come back through the watch before it is checked again.
const ECHO_WAIT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes in flight at once, all objects together: enough to write a node's attachment pods
/// within a few round trips, few enough not to flood the API server (each object has at
/// most one in flight and one a second anyway).
pub const MAX_IN_FLIGHT: usize = 16;
const FIELD_MANAGER: &str = "hotplug-watchdog";

/// The write history of one object: when it may be written next.
struct Writes<T> {
    next_allowed: Option<Instant>,
    retry: Backoff,
    /// What was written last, and when: not written again before the watch shows it.
    last: Option<(T, Instant)>,
    /// A write of it is under way: no other is started before it ends.
    in_flight: bool,
}

impl<T> Default for Writes<T> {
    fn default() -> Self {
        Writes { next_allowed: None, retry: Backoff::new(MIN_INTERVAL, MAX_RETRY_DELAY), last: None, in_flight: false }
    }
}

impl<T: PartialEq> Writes<T> {
    /// `Err(Some(when))`: not now, look again then; `Err(None)`: a write is under way,
    /// its end brings another look.
    fn may_write(&self, want: &T, now: Instant) -> Result<(), Option<Instant>> {
        if self.in_flight {
            return Err(None);
        }
        if let Some(t) = self.next_allowed.filter(|t| *t > now) {
            return Err(Some(t));
        }
        match &self.last {
            Some((last, at)) if last == want && now < *at + ECHO_WAIT => Err(Some(*at + ECHO_WAIT)),
            _ => Ok(()),
        }
    }

    /// Whether a write of `want` starts now, with `in_flight` writes under way; when not
    /// yet, when to look again goes into `again`.
    fn turn(&self, want: &T, now: Instant, again: &mut Again, in_flight: usize) -> Turn {
        match self.may_write(want, now) {
            Err(t) => {
                if let Some(t) = t {
                    again.at(t);
                }
                Turn::Later
            }
            // Full: the end of a write brings another look.
            Ok(()) if in_flight >= MAX_IN_FLIGHT => Turn::Full,
            Ok(()) => Turn::Now,
        }
    }

    fn written(&mut self, want: T, at: Instant) {
        self.retry.reset();
        self.next_allowed = Some(at + MIN_INTERVAL);
        self.last = Some((want, at));
    }

    /// Not before `now + delay` (at least the per-object rate), whatever it should say then.
    fn hold(&mut self, now: Instant, delay: Duration) -> Instant {
        let at = now + delay.max(MIN_INTERVAL);
        self.next_allowed = Some(at);
        self.last = None;
        at
    }

    /// A failed write: a growing, jittered delay, so that a fleet of agents does not
    /// retry in step.
    fn failed(&mut self, now: Instant) -> Instant {
        let delay = self.retry.next_delay();
        self.hold(now, delay)
    }
}

/// The earliest of the times to look again.
#[derive(Default)]
struct Again(Option<Instant>);

/// What the writers do with one object's write.
enum Turn {
    Now,
    /// Not this object now (rate, echo or a write under way).
    Later,
    /// No room for another write in flight: stop looking.
    Full,
}

impl Again {
    fn at(&mut self, t: Instant) {
        self.0 = Some(self.0.map_or(t, |a| a.min(t)));
    }
}

/// A write that ended, for the writer that started it.
enum Done {
    Pod(PodWrite),
    Vmi(VmiWrite),
}

struct PodWrite {
    uid: PodUid,
    namespace: String,
    name: String,
    want: Vec<Desired>,
    started: Instant,
    result: WriteResult,
    error: String,
}

struct VmiWrite {
    uid: PodUid,
    vmi: VmiRef,
    ops: Vec<Value>,
    started: Instant,
    result: WriteResult,
    error: String,
}

/// What every attachment pod's conditions should say, and what that was decided from.
struct Decided {
    verdicts: Arc<Verdicts>,
    view: Arc<ClusterView>,
    desired: BTreeMap<PodUid, Vec<Desired>>,
}

pub struct ConditionWriter {
    client: Client,
    writes: Family<WriteLabels, Counter>,
    pods: BTreeMap<PodUid, Writes<Vec<Desired>>>,
    /// Pods whose conditions could not be written: the agent is not ready meanwhile.
    failures: WriteHealth,
    /// `None` while the verdicts may not speak for the cluster (no full scan, or roles not
    /// from the API yet): then nothing is written.
    decided: Option<Decided>,
    /// Pods whose conditions may differ from what they should say: looked at on the next
    /// flush. A pod leaves it once it says what it should, or is gone.
    dirty: BTreeSet<PodUid>,
    /// The objects as last looked at: a pod whose object changed since is dirty.
    seen: Arc<Observed>,
}

impl ConditionWriter {
    pub fn new(client: Client, writes: Family<WriteLabels, Counter>, failures: WriteHealth) -> Self {
        ConditionWriter {
            client,
            writes,
            pods: BTreeMap::new(),
            failures,
            decided: None,
            dirty: BTreeSet::new(),
            seen: Arc::default(),
        }
    }

    /// Brings `decided` up to `verdicts` and `view`: new verdicts decide again only the
    /// pods they can change (`conditions::redecide`), a new view decides everything again.
    fn decide(&mut self, view: &Arc<ClusterView>, verdicts: &Arc<Verdicts>) {
        if !super::conditions::may_speak(verdicts) {
            self.decided = None;
            return;
        }
        let d = match &mut self.decided {
            Some(d) if Arc::ptr_eq(&d.view, view) => d,
            _ => {
                let desired = super::conditions::desired(verdicts, &view.attachment_pods).unwrap_or_default();
                self.pods.retain(|uid, w| w.in_flight || desired.contains_key(uid));
                self.failures.retain(|uid| desired.contains_key(uid));
                self.dirty = desired.keys().cloned().collect();
                self.decided = Some(Decided { verdicts: verdicts.clone(), view: view.clone(), desired });
                return;
            }
        };
        if Arc::ptr_eq(&d.verdicts, verdicts) {
            return;
        }
        self.dirty.extend(super::conditions::redecide(&d.verdicts, verdicts, &mut d.desired));
        d.verdicts = verdicts.clone();
    }

    /// Marks dirty every pod whose watched object changed since the last look (our own
    /// writes coming back among them). The persistent maps' diff skips what they share:
    /// the cost is that of the change, not of the node.
    fn notice_objects(&mut self, observed: &Arc<Observed>) {
        use imbl::ordmap::DiffItem;
        if Arc::ptr_eq(&self.seen, observed) {
            return;
        }
        let Some(d) = &self.decided else { return };
        for item in self.seen.pods.diff(&observed.pods) {
            if let DiffItem::Add(uid, _) | DiffItem::Update { new: (uid, _), .. } = item {
                if d.desired.contains_key(uid) {
                    self.dirty.insert(uid.clone());
                }
            }
        }
        self.seen = observed.clone();
    }

    /// Starts a write for every dirty pod whose conditions differ from what the verdicts
    /// say and that may be written now, while `in_flight` has room; returns when to look
    /// again.
    fn flush(
        &mut self,
        observed: &Arc<Observed>,
        verdicts: &Arc<Verdicts>,
        in_flight: &mut JoinSet<Done>,
    ) -> Option<Instant> {
        self.decide(&observed.view, verdicts);
        self.notice_objects(observed);
        // No condition before the first full scan and a view from synced watches.
        let desired = &self.decided.as_ref()?.desired;
        let mut again = Again::default();
        let now = Instant::now();
        let transition_time = Time(k8s_openapi::jiff::Timestamp::now());
        let mut look = std::mem::take(&mut self.dirty).into_iter();
        for uid in look.by_ref() {
            // Gone from the view, or not seen through the watch yet (its arrival marks
            // it dirty again).
            let (Some(want), Some(pod)) = (desired.get(&uid), observed.pods.get(&uid)) else { continue };
            let state = self.pods.entry(uid.clone()).or_default();
            let Some(body) = patch(&pod.conditions, want, &transition_time) else {
                state.retry.reset();
                // The pod already says what it should: nothing of it is stale.
                self.failures.forget(&uid);
                continue;
            };
            match state.turn(want, now, &mut again, in_flight.len()) {
                Turn::Later => {
                    self.dirty.insert(uid);
                    continue;
                }
                Turn::Full => {
                    self.dirty.insert(uid);
                    break;
                }
                Turn::Now => {}
            }
            state.in_flight = true;
            let (namespace, name) = (pod.meta.namespace.clone(), pod.meta.name.clone());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let want = want.clone();
            in_flight.spawn(async move {
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                let (result, error, _) = timed(api.patch_status(&name, &params, &Patch::Strategic(&body))).await;
                Done::Pod(PodWrite { uid, namespace, name, want, started: now, result, error })
            });
        }
        // No room left: the rest waits for a write to end.
        self.dirty.extend(look);
        again.0
    }

    fn done(&mut self, w: PodWrite) {
        self.writes.get_or_create(&WriteLabels::new(WriteKind::PodConditions, w.result)).inc();
        // Gone from the view meanwhile: nothing to keep about it.
        let Some(state) = self.pods.get_mut(&w.uid) else { return };
        state.in_flight = false;
        // Whatever the result, the pod is looked at again: it may need another write.
        self.dirty.insert(w.uid.clone());
        let (ns, name) = (&w.namespace, &w.name);
        if w.result == WriteResult::Ok {
            state.written(w.want, w.started);
            tracing::debug!(pod = %name, namespace = %ns, "attachment pod conditions written");
        } else {
            state.failed(Instant::now());
            tracing::warn!(pod = %name, namespace = %ns, result = w.result.label(), error = %w.error, "cannot write attachment pod conditions; retrying later");
        }
        self.failures.record(&w.uid, w.result, || format!("pod {ns}/{name} ({}): {}", w.result.label(), w.error));
    }
}

/// Whether the agent writes the VMI's volumeStatus (`--vmi-volume-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VmiStatusMode {
    /// Never (the default: it needs write access to VMIs, and stock KubeVirt puts such
    /// writes back).
    Off,
    /// Write; when a write is put back, back off for that VMI (1 min, doubling to 1 h).
    On,
    /// Write until the first write is put back or refused, then stop for good: the
    /// cluster's KubeVirt does not accept our words.
    Auto,
}

const REVERT_BACKOFF: Duration = Duration::from_secs(60);
const REVERT_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The write history of one VMI: failures back off like a pod's, writes that were put back
/// or refused on a slower schedule of their own.
struct VmiWrites {
    writes: Writes<Vec<Value>>,
    put_back: Backoff,
}

impl Default for VmiWrites {
    fn default() -> Self {
        VmiWrites { writes: Writes::default(), put_back: Backoff::new(REVERT_BACKOFF, REVERT_BACKOFF_MAX) }
    }
}

pub struct VmiStatusWriter {
    client: Client,
    mode: VmiStatusMode,
    writes: Family<WriteLabels, Counter>,
    events: Option<EventSender>,
    vmis: BTreeMap<PodUid, VmiWrites>,
    /// What each write in flight must leave behind, to tell a write put back.
    expected: BTreeMap<PodUid, Vec<Expectation>>,
    /// Auto mode gave up, and said why once.
    stopped: bool,
}

impl VmiStatusWriter {
    pub fn new(
        client: Client,
        mode: VmiStatusMode,
        writes: Family<WriteLabels, Counter>,
        events: Option<EventSender>,
    ) -> Self {
        VmiStatusWriter {
            client,
            mode,
            writes,
            events,
            vmis: BTreeMap::new(),
            expected: BTreeMap::new(),
            stopped: false,
        }
    }

    /// Whether the watches must keep the VMIs' volumeStatus for this writer.
    pub fn is_on(&self) -> bool {
        self.mode != VmiStatusMode::Off
    }

    /// Starts a write for every VMI whose volumeStatus words are out of line; returns
    /// when to look again.
    fn flush(&mut self, observed: &Observed, verdicts: &Verdicts, in_flight: &mut JoinSet<Done>) -> Option<Instant> {
        if !self.is_on() || self.stopped {
            return None;
        }
        let launchers: BTreeMap<&str, &PodUid> =
            observed.view.vmis.iter().map(|(launcher, vmi)| (vmi.uid.as_str(), launcher)).collect();
        self.vmis.retain(|uid, w| w.writes.in_flight || observed.vmis.contains_key(uid));
        let mut again = Again::default();
        let now = Instant::now();
        for (uid, vmi) in &observed.vmis {
            // Auto mode writes one at a time until KubeVirt is known to keep our words:
            // one write put back is enough to stop.
            if self.mode == VmiStatusMode::Auto && !self.expected.is_empty() {
                break;
            }
            let Some(launcher) = launchers.get(uid.as_str()) else { continue };
            let Some(entries) = &vmi.volume_status else { continue };
            let Some((ops, expect)) = volume_status::patch(entries, launcher, verdicts) else { continue };
            let state = self.vmis.entry(uid.clone()).or_default();
            match state.writes.turn(&ops, now, &mut again, in_flight.len()) {
                Turn::Later => continue,
                Turn::Full => break,
                Turn::Now => {}
            }
            let Ok(json_patch) = serde_json::from_value::<json_patch::Patch>(Value::Array(ops.clone())) else {
                continue;
            };
            state.writes.in_flight = true;
            self.expected.insert(uid.clone(), expect.clone());
            let m = &vmi.meta;
            let vmi_ref = VmiRef { namespace: m.namespace.clone(), name: m.name.clone(), uid: m.uid.clone() };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &vmi_ref.namespace, &super::vmi_resource());
            let uid = uid.clone();
            in_flight.spawn(async move {
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                let (mut result, error, stored) =
                    timed(api.patch(&vmi_ref.name, &params, &Patch::Json::<()>(json_patch))).await;
                // KubeVirt's webhook answers success and puts the status back: only the
                // object the server stored tells.
                if stored.is_some_and(|s| !serde_json::to_value(&s).is_ok_and(|s| volume_status::landed(&s, &expect))) {
                    result = WriteResult::Reverted;
                }
                Done::Vmi(VmiWrite { uid, vmi: vmi_ref, ops, started: now, result, error })
            });
        }
        again.0
    }

    fn done(&mut self, w: VmiWrite) {
        self.expected.remove(&w.uid);
        self.writes.get_or_create(&WriteLabels::new(WriteKind::VmiVolumeStatus, w.result)).inc();
        let (ns, name) = (&w.vmi.namespace, &w.vmi.name);
        let Some(state) = self.vmis.get_mut(&w.uid) else { return };
        state.writes.in_flight = false;
        let now = Instant::now();
        match w.result {
            WriteResult::Ok => {
                tracing::info!(vmi = %name, namespace = %ns, "VMI volumeStatus reason/message written");
                state.put_back.reset();
                state.writes.written(w.ops, w.started);
            }
            WriteResult::Reverted | WriteResult::Forbidden => {
                let why = if w.result == WriteResult::Reverted {
                    "the write was accepted and then put back (KubeVirt reverts status writes by other service accounts)".to_string()
                } else {
                    format!("the write was refused ({}); grant deploy/optional/vmi-volume-status-rbac.yaml or use --vmi-volume-status off", w.error)
                };
                if self.mode == VmiStatusMode::Auto {
                    tracing::warn!(vmi = %name, namespace = %ns, "VMI volumeStatus writes stop: {why}; attachment-pod conditions and Events carry the same truth");
                    self.stopped = true;
                } else {
                    let delay = state.put_back.next_delay();
                    state.writes.hold(now, delay);
                    tracing::warn!(vmi = %name, namespace = %ns, retry_in = ?delay, "VMI volumeStatus write did not land: {why}; backing off");
                }
                if let Some(events) = &self.events {
                    events.send(VmiEvent {
                        vmi: w.vmi.clone(),
                        warning: true,
                        reason: STATUS_WRITE_REJECTED,
                        note: format!("hotplug-watchdog could not record its findings in volumeStatus: {why}"),
                    });
                }
            }
            _ => {
                // A failed test means the list changed under us: the watch brings the
                // new one and the patch is derived again.
                tracing::debug!(vmi = %name, namespace = %ns, result = w.result.label(), error = %w.error, "VMI volumeStatus write failed; retrying later");
                state.writes.failed(now);
            }
        }
    }
}

/// A write with its timeout: how it ended, the error's words, and the answer if any.
async fn timed<T>(write: impl Future<Output = Result<T, kube::Error>>) -> (WriteResult, String, Option<T>) {
    let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
    let (outcome, error) = (WriteResult::of(&result), error_text(&result, WRITE_TIMEOUT));
    (outcome, error, result.ok().and_then(Result::ok))
}

/// Keeps the attachment pods' conditions, and the VMIs' volumeStatus words, in line with
/// the newest verdicts (from the engine) and the newest objects (from the watches). Both
/// come through watch channels, which hold only the newest value: however slow the API
/// server, nothing piles up, and what is written is what is true now.
pub async fn run(
    mut conditions: ConditionWriter,
    mut volume_status: VmiStatusWriter,
    mut snapshots: Snapshots,
    mut observed: watch::Receiver<Arc<Observed>>,
    lease_first: impl std::future::Future<Output = ()>,
) {
    // Nothing is written before the lease's first write was answered (`lease::first_outcome`).
    lease_first.await;
    let mut in_flight: JoinSet<Done> = JoinSet::new();
    // When to bring the objects in line next; armed by any change.
    let mut flush_at: Option<tokio::time::Instant> = None;
    let soonest = |at: Option<tokio::time::Instant>, t: tokio::time::Instant| Some(at.map_or(t, |a| a.min(t)));
    loop {
        let flush = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let now = tokio::time::Instant::now();
        tokio::select! {
            // New verdicts are the node's news: written after a short window only.
            Ok(()) = snapshots.changed() => flush_at = soonest(flush_at, now + NEWS_WINDOW),
            // Changes of cluster objects wait a moment: a burst (a swap, our own writes
            // coming back) makes one write, and the engine's verdicts catch up with the
            // new view. Verdicts already reflect the view they were judged with.
            Ok(()) = observed.changed() => flush_at = soonest(flush_at, now + COALESCE),
            Some(ended) = in_flight.join_next() => {
                let mut ended = Some(ended);
                while let Some(result) = ended {
                    match result {
                        Ok(Done::Pod(w)) => conditions.done(w),
                        Ok(Done::Vmi(w)) => volume_status.done(w),
                        // A write panicked: end this task, so that /healthz says so.
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                    ended = in_flight.try_join_next();
                }
                // Room for more writes, and the objects written may need another look.
                flush_at = soonest(flush_at, now);
            }
            () = flush => {
                let (v, o) = (snapshots.borrow_and_update().verdicts.clone(), observed.borrow_and_update().clone());
                let again = [
                    conditions.flush(&o, &v, &mut in_flight),
                    volume_status.flush(&o, &v, &mut in_flight),
                ];
                flush_at = again.into_iter().flatten().min().map(Into::into);
            }
            else => return,
        }
    }
}
