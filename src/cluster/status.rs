//! Writes the attachment-pod conditions decided in [`super::conditions`]. Discipline:
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
use crate::layout::PodUid;
use crate::metrics::WriteLabels;

/// Changes within this window make one write.
pub const COALESCE: Duration = Duration::from_millis(200);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long a write may take to come back through the watch before it is checked again.
const ECHO_WAIT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct PodWrites {
    next_allowed: Option<Instant>,
    retry_delay: Option<Duration>,
    last: Option<(Vec<Desired>, Instant)>,
}

pub struct ConditionWriter {
    client: Client,
    writes: Family<WriteLabels, Counter>,
    pods: BTreeMap<PodUid, PodWrites>,
}

impl ConditionWriter {
    pub fn new(client: Client, writes: Family<WriteLabels, Counter>) -> Self {
        ConditionWriter { client, writes, pods: BTreeMap::new() }
    }

    /// Brings every pod's conditions to `desired`; returns when to look again, if
    /// something is left to do.
    pub async fn flush(
        &mut self,
        observed: &BTreeMap<String, Pod>,
        desired: &BTreeMap<PodUid, Vec<Desired>>,
    ) -> Option<Instant> {
        self.pods.retain(|uid, _| desired.contains_key(uid));
        let mut again: Option<Instant> = None;
        let mut later = |t: Instant| again = Some(again.map_or(t, |a| a.min(t)));
        for (uid, want) in desired {
            let Some(pod) = observed.get(uid) else { continue };
            let now = Instant::now();
            let state = self.pods.entry(uid.clone()).or_default();
            let Some(body) = patch(pod, want, &Time(k8s_openapi::jiff::Timestamp::now())) else {
                state.retry_delay = None;
                continue;
            };
            if let Some(t) = state.next_allowed.filter(|t| *t > now) {
                later(t);
                continue;
            }
            if let Some((last, at)) = &state.last {
                if last == want && now < *at + ECHO_WAIT {
                    later(*at + ECHO_WAIT);
                    continue;
                }
            }
            let (ns, name) =
                (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let params = PatchParams { field_manager: Some("hotplug-watchdog".into()), ..Default::default() };
            let result =
                tokio::time::timeout(WRITE_TIMEOUT, api.patch_status(&name, &params, &Patch::Strategic(&body))).await;
            let outcome = match &result {
                Ok(Ok(_)) => "ok",
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => "conflict",
                Ok(Err(kube::Error::Api(s))) if s.code == 403 => "forbidden",
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => "not_found",
                Ok(Err(_)) | Err(_) => "error",
            };
            self.writes.get_or_create(&WriteLabels { kind: "pod_conditions", result: outcome }).inc();
            if outcome == "ok" {
                tracing::debug!(pod = %name, namespace = %ns, "attachment pod conditions written");
                state.retry_delay = None;
                state.next_allowed = Some(now + MIN_INTERVAL);
                state.last = Some((want.clone(), now));
                later(now + ECHO_WAIT);
            } else {
                let delay = state.retry_delay.map_or(MIN_INTERVAL, |d| (d * 2).min(MAX_RETRY_DELAY));
                // Jitter: a fleet of agents must not retry in step.
                let jitter = Duration::from_millis(u64::from(std::process::id() % 500));
                state.retry_delay = Some(delay);
                state.next_allowed = Some(now + delay + jitter);
                state.last = None;
                later(now + delay + jitter);
                let error = match result {
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("timed out after {WRITE_TIMEOUT:?}"),
                    Ok(Ok(_)) => unreachable!(),
                };
                tracing::warn!(pod = %name, namespace = %ns, %error, retry_in = ?delay, "cannot write attachment pod conditions");
            }
        }
        again
    }
}
