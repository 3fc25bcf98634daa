//! Writes the attachment-pod conditions decided in [`super::conditions`] and the VMI
//! volumeStatus words decided in [`super::volume_status`]. Discipline:
//! a write only where a pod's conditions differ from what they should say (so none in a
//! steady state, and stale ones are corrected at start); changes within a short window
//! make one write; at most one write per pod per second; a failed write is retried with a
//! jittered, growing delay; a write is not repeated before the watch has had time to
//! show it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::conditions::{patch, Desired};
use super::outcome::{error_text, WriteKind, WriteResult};
use super::write_health::WriteHealth;
use crate::backoff::Backoff;
use crate::layout::PodUid;
use crate::metrics::WriteLabels;

/// Changes within this window make one write.
pub const COALESCE: Duration = Duration::from_millis(200);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long a write may take to come back through the watch before it is checked again.
const ECHO_WAIT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The write history of one object: when it may be written next.
struct Writes<T> {
    next_allowed: Option<Instant>,
    retry: Backoff,
    /// What was written last, and when: not written again before the watch shows it.
    last: Option<(T, Instant)>,
}

impl<T> Writes<T> {
    fn new(first_retry: Duration, max_retry: Duration) -> Self {
        Writes { next_allowed: None, retry: Backoff::new(first_retry, max_retry), last: None }
    }
}

impl<T: PartialEq> Writes<T> {
    /// `Err(when)`: not now, look again then.
    fn may_write(&self, want: &T, now: Instant) -> Result<(), Instant> {
        if let Some(t) = self.next_allowed.filter(|t| *t > now) {
            return Err(t);
        }
        match &self.last {
            Some((last, at)) if last == want && now < *at + ECHO_WAIT => Err(*at + ECHO_WAIT),
            _ => Ok(()),
        }
    }

    /// Records a write; returns when to look again.
    fn written(&mut self, want: T, ok: bool, now: Instant) -> Instant {
        if ok {
            self.retry.reset();
            self.next_allowed = Some(now + MIN_INTERVAL);
            self.last = Some((want, now));
            now + ECHO_WAIT
        } else {
            self.backoff(now)
        }
    }

    /// A growing, jittered delay, never under the per-object rate: a fleet of agents must
    /// not retry in step.
    fn backoff(&mut self, now: Instant) -> Instant {
        let at = now + self.retry.next_delay().max(MIN_INTERVAL);
        self.next_allowed = Some(at);
        self.last = None;
        at
    }
}

pub struct ConditionWriter {
    client: Client,
    writes: Family<WriteLabels, Counter>,
    pods: BTreeMap<PodUid, Writes<Vec<Desired>>>,
    /// Pods whose conditions could not be written: the agent is not ready meanwhile.
    failures: WriteHealth,
}

impl ConditionWriter {
    pub fn new(client: Client, writes: Family<WriteLabels, Counter>, failures: WriteHealth) -> Self {
        ConditionWriter { client, writes, pods: BTreeMap::new(), failures }
    }

    /// Brings every pod's conditions to `desired`; returns when to look again, if
    /// something is left to do.
    pub async fn flush(
        &mut self,
        observed: &BTreeMap<String, Pod>,
        desired: &BTreeMap<PodUid, Vec<Desired>>,
    ) -> Option<Instant> {
        self.pods.retain(|uid, _| desired.contains_key(uid));
        self.failures.retain(|uid| desired.contains_key(uid));
        let mut again: Option<Instant> = None;
        let mut later = |t: Instant| again = Some(again.map_or(t, |a| a.min(t)));
        for (uid, want) in desired {
            let Some(pod) = observed.get(uid.as_str()) else { continue };
            let now = Instant::now();
            let state = self.pods.entry(uid.clone()).or_insert_with(|| Writes::new(MIN_INTERVAL, MAX_RETRY_DELAY));
            let Some(body) = patch(pod, want, &Time(k8s_openapi::jiff::Timestamp::now())) else {
                state.retry.reset();
                // The pod already says what it should: nothing of it is stale.
                self.failures.forget(uid);
                continue;
            };
            if let Err(t) = state.may_write(want, now) {
                later(t);
                continue;
            }
            let (ns, name) =
                (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let params = PatchParams { field_manager: Some("hotplug-watchdog".into()), ..Default::default() };
            let result =
                tokio::time::timeout(WRITE_TIMEOUT, api.patch_status(&name, &params, &Patch::Strategic(&body))).await;
            let result_label = WriteResult::of(&result);
            self.writes.get_or_create(&WriteLabels::new(WriteKind::PodConditions, result_label)).inc();
            let ok = result_label == WriteResult::Ok;
            later(state.written(want.clone(), ok, now));
            self.failures.record(uid, result_label, || {
                format!("pod {ns}/{name} ({}): {}", result_label.label(), error_text(&result, WRITE_TIMEOUT))
            });
            if ok {
                tracing::debug!(pod = %name, namespace = %ns, "attachment pod conditions written");
            } else {
                tracing::warn!(pod = %name, namespace = %ns, result = result_label.label(), error = %error_text(&result, WRITE_TIMEOUT), "cannot write attachment pod conditions; retrying later");
            }
        }
        again
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

pub struct VmiStatusWriter {
    client: Client,
    mode: VmiStatusMode,
    writes: Family<WriteLabels, Counter>,
    events: Option<super::events::EventSender>,
    vmis: BTreeMap<String, Writes<Vec<serde_json::Value>>>,
    /// Auto mode gave up, and said why once.
    stopped: bool,
}

impl VmiStatusWriter {
    pub fn new(
        client: Client,
        mode: VmiStatusMode,
        writes: Family<WriteLabels, Counter>,
        events: Option<super::events::EventSender>,
    ) -> Self {
        VmiStatusWriter { client, mode, writes, events, vmis: BTreeMap::new(), stopped: false }
    }

    /// Brings each VMI's volumeStatus words in line; `vmis` by UID, `launchers` VMI UID ->
    /// its launcher pod UID. Returns when to look again, if something is left to do.
    pub async fn flush(
        &mut self,
        vmis: &BTreeMap<String, kube::api::DynamicObject>,
        launchers: &BTreeMap<String, PodUid>,
        verdicts: &crate::verdict::Verdicts,
    ) -> Option<Instant> {
        if self.mode == VmiStatusMode::Off || self.stopped {
            return None;
        }
        self.vmis.retain(|uid, _| vmis.contains_key(uid));
        let mut again: Option<Instant> = None;
        let mut later = |t: Instant| again = Some(again.map_or(t, |a| a.min(t)));
        for (uid, vmi) in vmis {
            let Some(launcher) = launchers.get(uid) else { continue };
            let Ok(doc) = serde_json::to_value(vmi) else { continue };
            let Some((ops, expect)) = super::volume_status::patch(&doc, launcher, verdicts) else { continue };
            let now = Instant::now();
            let state = self.vmis.entry(uid.clone()).or_insert_with(|| Writes::new(MIN_INTERVAL, MAX_RETRY_DELAY));
            if let Err(t) = state.may_write(&ops, now) {
                later(t);
                continue;
            }
            let (ns, name) =
                (vmi.metadata.namespace.clone().unwrap_or_default(), vmi.metadata.name.clone().unwrap_or_default());
            let Ok(json_patch) = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops.clone()))
            else {
                continue;
            };
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &super::vmi_resource());
            let params = PatchParams { field_manager: Some("hotplug-watchdog".into()), ..Default::default() };
            let result =
                tokio::time::timeout(WRITE_TIMEOUT, api.patch(&name, &params, &Patch::Json::<()>(json_patch))).await;
            let mut label = WriteResult::of(&result);
            // KubeVirt's webhook answers success and puts the status back: only the object
            // the server stored tells.
            if let Ok(Ok(stored)) = &result {
                if !serde_json::to_value(stored).is_ok_and(|s| super::volume_status::landed(&s, &expect)) {
                    label = WriteResult::Reverted;
                }
            }
            self.writes.get_or_create(&WriteLabels::new(WriteKind::VmiVolumeStatus, label)).inc();
            match label {
                WriteResult::Ok => {
                    tracing::info!(vmi = %name, namespace = %ns, "VMI volumeStatus reason/message written");
                    later(state.written(ops, true, now));
                }
                WriteResult::Reverted | WriteResult::Forbidden => {
                    let why = if label == WriteResult::Reverted {
                        "the write was accepted and then put back (KubeVirt reverts status writes by other service accounts)".to_string()
                    } else {
                        format!("the write was refused ({}); grant deploy/optional/vmi-volume-status-rbac.yaml or use --vmi-volume-status off", error_text(&result, WRITE_TIMEOUT))
                    };
                    if self.mode == VmiStatusMode::Auto {
                        tracing::warn!(vmi = %name, namespace = %ns, "VMI volumeStatus writes stop: {why}; attachment-pod conditions and Events carry the same truth");
                        self.stopped = true;
                    } else {
                        // Put back or refused: the slow schedule, not the one for failures.
                        if !state.retry.is_backing_off() {
                            state.retry = Backoff::new(REVERT_BACKOFF, REVERT_BACKOFF_MAX);
                        }
                        let retry = state.backoff(now);
                        tracing::warn!(vmi = %name, namespace = %ns, retry_in = ?retry.saturating_duration_since(now), "VMI volumeStatus write did not land: {why}; backing off");
                        later(retry);
                    }
                    if let (Some(events), Some(vmi_uid)) = (&self.events, &vmi.metadata.uid) {
                        events.send(super::events::VmiEvent {
                            vmi: super::view::VmiRef {
                                namespace: ns.clone(),
                                name: name.clone(),
                                uid: vmi_uid.clone(),
                            },
                            warning: true,
                            reason: super::events::STATUS_WRITE_REJECTED,
                            note: format!("hotplug-watchdog could not record its findings in volumeStatus: {why}"),
                        });
                    }
                    if self.stopped {
                        return None;
                    }
                }
                _ => {
                    // A failed test means the list changed under us: the watch brings the
                    // new one and the patch is derived again.
                    tracing::debug!(vmi = %name, namespace = %ns, result = label.label(), error = %error_text(&result, WRITE_TIMEOUT), "VMI volumeStatus write failed; retrying later");
                    later(state.written(ops, false, now));
                }
            }
        }
        again
    }
}
