//! KubeVirt v1.9.0's virt-controller as far as attachment pods go, played against the real
//! API server under the controller's own identity (impersonation of
//! `system:serviceaccount:kubevirt:kubevirt-controller`, with the RBAC KubeVirt grants it).
//! What it imitates, from `pkg/virt-controller/watch/vmi` at v1.9.0 (docs/CODEPATH.md):
//!
//! - which attachment pods a VMI sync deletes: `sync` (lifecycle.go) runs
//!   `deleteAllAttachmentPods` for a final VMI, `deleteOrphanedAttachmentPods` for launcher
//!   pods that are down (errors only logged), and, with a ready launcher,
//!   `handleHotplugVolumes` → `getActiveAndOldAttachmentPods` (the "-2" volume count
//!   included) → `cleanupAttachmentPods` (the fallback pod, the removed-volume rule, return
//!   at the first failed delete). PVCs are taken as ready to attach (there are no PVC
//!   objects here) and the imitation creates no pod: the scenario does;
//! - how it deletes: `deleteAttachmentPod` → `deletePod`: DELETE by name with
//!   `gracePeriodSeconds: 0` and nothing else; `SuccessfulDelete` or `FailedDelete` Events
//!   on the VMI through client-go's recorder (repeats folded into a count, at most 25 per
//!   object then one per 5 minutes: the spam filter);
//! - what a failed sync does: `updateStatus` sets the VMI's `Synchronized` condition to
//!   False with the sync error's reason and message (once per reason: `CheckFailure`), but
//!   only for a VMI that is neither Running nor Scheduled (for those it returns before), and
//!   `Execute` re-queues the VMI with `AddRateLimited` (client-go's default controller rate
//!   limiter: 5 ms doubling per failure, at most 1000 s; `Forget` on success); any change
//!   to the VMI or a pod of its namespace re-queues it at once (informer handlers; an
//!   attachment pod leads to its VMI through its launcher, `resolveControllerRef`).
//!
//! `Cleanup::Gated` is the same with contrib/kubevirt's patch: before each delete in
//! `cleanupAttachmentPods` it asks the gate, through `gate-decide` (the gate's actual
//! rules), with the agent's lease read as the patched controller reads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};

use super::control_plane::ControlPlane;
use super::gate_decide::{self, Decision};

/// KubeVirt's controller, as KubeVirt's operator names its ServiceAccount.
pub const CONTROLLER_USER: &str = "system:serviceaccount:kubevirt:kubevirt-controller";
/// kube-controller-manager's garbage collector (its client is "generic-garbage-collector").
pub const GC_USER: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
/// deploy/handoff-hold-policy.yaml's policy and binding.
pub const HOLD_POLICY: &str = "hotplug-watchdog-handoff-hold";

/// RBAC for the identities the tests act as: KubeVirt's controller (what KubeVirt's
/// operator grants it on pods, Events and VMIs, `rbac/controller.go`) and the garbage
/// collector (what `system:controller:generic-garbage-collector` grants on pods).
pub fn grant_identities(cp: &ControlPlane) {
    let docs = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "test:kubevirt-controller"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete", "update", "create", "patch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["update", "create", "patch"]},
                {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachineinstances"], "verbs": ["get", "list", "watch", "update", "patch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "test:kubevirt-controller"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test:kubevirt-controller"},
            "subjects": [{"kind": "ServiceAccount", "name": "kubevirt-controller", "namespace": "kubevirt"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "test:generic-garbage-collector"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch", "update", "delete"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "test:generic-garbage-collector"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test:generic-garbage-collector"},
            "subjects": [{"kind": "ServiceAccount", "name": "generic-garbage-collector", "namespace": "kube-system"}]}),
    ];
    cp.rt.block_on(async {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let pp = PostParams::default();
        for d in docs {
            let r = if d["kind"] == "ClusterRole" {
                Api::<ClusterRole>::all(cp.admin.clone())
                    .create(&pp, &serde_json::from_value(d).unwrap())
                    .await
                    .map(|_| ())
            } else {
                Api::<ClusterRoleBinding>::all(cp.admin.clone())
                    .create(&pp, &serde_json::from_value(d).unwrap())
                    .await
                    .map(|_| ())
            };
            match r {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("RBAC for the test identities: {e}"),
            }
        }
    });
}

/// Installs deploy/handoff-hold-policy.yaml (as `kubectl apply -k deploy/` would) and waits
/// until the API server enforces it: a probe pod in namespace `hold-probe` whose condition
/// says False is deleted (dry run) as KubeVirt's controller until that is refused. The
/// probe's refusals are counted in the API server's metrics too: compare differences.
pub fn install_hold_policy(cp: &ControlPlane) {
    grant_identities(cp);
    enforce_hold_policy(cp);
}

/// Installs deploy/handoff-hold-policy.yaml and waits until it is enforced, as
/// `install_hold_policy`, for a control plane where KubeVirt's controller already has its
/// own RBAC (the conformance lane installs KubeVirt's).
pub fn enforce_hold_policy(cp: &ControlPlane) {
    cp.rt.block_on(cp.apply("deploy/handoff-hold-policy.yaml"));
    let controller = cp.client_as(CONTROLLER_USER);
    cp.rt.block_on(async {
        let pp = PostParams::default();
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        let _ = nss.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "hold-probe"}})).unwrap()).await;
        // With the ServiceAccount admission plugin on, a pod needs its ServiceAccount.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(cp.admin.clone(), "hold-probe");
        let _ = sas.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap()).await;
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "hold-probe");
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"name": "hp-volume-probe", "labels": {"kubevirt.io": "hotplug-disk"}},
            "spec": {"containers": [{"name": "hotplug-disk", "image": "virt-launcher"}]}}))
        .unwrap();
        pods.create(&pp, &probe).await.unwrap();
        let condition = json!({"status": {"conditions": [{"type": "hotplug-watchdog.io/HandoffSafe", "status": "False",
            "reason": "SoleBacker", "message": "probe"}]}});
        pods.patch_status("hp-volume-probe", &PatchParams::default(), &Patch::Strategic(&condition)).await.unwrap();
        let as_controller: Api<Pod> = Api::namespaced(controller, "hold-probe");
        let dry_run = DeleteParams { dry_run: true, grace_period_seconds: Some(0), ..Default::default() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match as_controller.delete("hp-volume-probe", &dry_run).await {
                Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(HOLD_POLICY) => break,
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    panic!("the controller may not delete pods (RBAC?): {e:?}")
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "{HOLD_POLICY} not enforced 30 s after it was created");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pods.delete("hp-volume-probe", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .unwrap();
    });
}

/// The series of `apiserver_validating_admission_policy_check_total` for the hold policy
/// and `enforcement_action` (`deny`, `warn`, `audit`, `allow` = an evaluation error let
/// through), summed over `error_type`; 0 when the API server has no such series yet.
pub fn hold_checks(metrics: &str, enforcement_action: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_validating_admission_policy_check_total{"))
        .filter(|l| {
            l.contains(&format!("policy=\"{HOLD_POLICY}\""))
                && l.contains(&format!("enforcement_action=\"{enforcement_action}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Which KubeVirt `cleanupAttachmentPods` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// KubeVirt v1.9.0 as released.
    V190,
    /// v1.9.0 with contrib/kubevirt's patch: the gate decides before each delete.
    Gated,
}

/// One DELETE the controller sent.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub pod: String,
    pub at: Instant,
    /// The v1.9.0 function that sent it.
    pub path: &'static str,
    /// The pod's `HandoffSafe` condition (status, reason) in the list the sync worked from.
    pub handoff_seen: Option<(String, String)>,
    /// The API server's message when the DELETE was refused; `None`: it went through.
    pub refused: Option<String>,
}

/// What the controller did, for the scenario to look at.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub syncs: u32,
    pub attempts: Vec<Attempt>,
    /// Event API writes (creates and count patches).
    pub event_writes: u32,
    /// Events the recorder's spam filter dropped (never written).
    pub events_dropped: u32,
    /// Events by (type, reason, message), with their count.
    pub events: BTreeMap<(String, String, String), u32>,
    /// When each Event API write was made.
    pub event_write_times: Vec<Instant>,
    /// Writes of the VMI (its `Synchronized` condition; never for a Running VMI).
    pub vmi_writes: u32,
    /// The gate's decisions (`Cleanup::Gated`): pod, decision and when.
    pub gate: Vec<(String, Decision, Instant)>,
}

impl Stats {
    /// When a DELETE of `pod` went through.
    pub fn deleted(&self, pod: &str) -> Option<Instant> {
        self.attempts.iter().find(|a| a.pod == pod && a.refused.is_none()).map(|a| a.at)
    }

    pub fn refusals(&self) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.refused.is_some()).collect()
    }
}

/// The imitation, running on the control plane's runtime until stopped or dropped.
pub struct KubeVirtController {
    stats: Arc<Mutex<Stats>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KubeVirtController {
    /// Starts the controller's work queue for one VMI, `ns/vmi`. Its first sync runs at once.
    pub fn start(cp: &ControlPlane, ns: &str, vmi: &str, cleanup: Cleanup) -> Self {
        grant_identities(cp);
        let client = cp.client_as(CONTROLLER_USER);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ctl = Ctl {
            client,
            ns: ns.to_string(),
            vmi: vmi.to_string(),
            cleanup,
            stats: stats.clone(),
            recorder: Recorder::default(),
            last_lease: HashMap::new(),
        };
        let task = cp.rt.spawn(ctl.run(rx));
        KubeVirtController { stats, stop: Some(tx), task: Some(task) }
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Polls until `cond` holds; a bounded wait, not a timing assertion.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the controller did: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the work queue (a sync in progress finishes first) and returns what it did.
    pub fn stop(mut self, cp: &ControlPlane) -> Stats {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = cp.rt.block_on(task);
        }
        self.stats()
    }
}

impl Drop for KubeVirtController {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A spawned task that ends with its owner (a watch must not outlive its test's API server).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A sync error: its reason (the VMI's Synchronized condition, when not Running) and message.
#[derive(Debug)]
struct SyncError {
    reason: &'static str,
    message: String,
}

struct Ctl {
    client: Client,
    ns: String,
    vmi: String,
    cleanup: Cleanup,
    stats: Arc<Mutex<Stats>>,
    recorder: Recorder,
    /// The last lease read per node (the patched controller's `lastRead`).
    last_lease: HashMap<String, Value>,
}

/// client-go's default controller rate limiter, per item: 5 ms · 2^failures, at most 1000 s.
fn backoff(failures: u32) -> Duration {
    let ms = 5f64 * 2f64.powi(failures.min(40) as i32);
    Duration::from_secs_f64((ms / 1000.0).min(1000.0))
}

impl Ctl {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let _watches = [AbortOnDrop(self.watch_pods(wake.clone())), AbortOnDrop(self.watch_vmi(wake.clone()))];
        // The VMI is queued once at start (the informer's initial list adds it).
        let mut next_at = Some(tokio::time::Instant::now());
        let mut failures = 0;
        loop {
            let timer = next_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                _ = &mut stop => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(timer) => next_at = None,
            }
            match self.execute().await {
                Ok(requeue) => {
                    failures = 0;
                    if let Some(d) = requeue {
                        let at = tokio::time::Instant::now() + d;
                        next_at = Some(next_at.map_or(at, |n| n.min(at)));
                    }
                }
                Err(()) => {
                    let at = tokio::time::Instant::now() + backoff(failures);
                    failures += 1;
                    next_at = Some(next_at.map_or(at, |n| n.min(at)));
                }
            }
        }
    }

    fn watch_pods(&self, wake: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(e) = stream.next().await {
                if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = e {
                    wake.notify_one();
                }
            }
        })
    }

    fn watch_vmi(&self, wake: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &hotplug_watchdog::cluster::vmi_resource());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.vmi));
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(e) = stream.next().await {
                if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = e {
                    wake.notify_one();
                }
            }
        })
    }

    fn vmis(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &hotplug_watchdog::cluster::vmi_resource())
    }

    /// `Execute`/`execute`: sync, then updateStatus; Err means AddRateLimited.
    async fn execute(&mut self) -> Result<Option<Duration>, ()> {
        self.stats.lock().unwrap().syncs += 1;
        // Pods first, then the VMI: a pod a scenario creates for a spec it changed just
        // before is never seen with the spec before the change (the real controller's
        // expectations keep its caches from that).
        let pods: Vec<Pod> =
            match Api::<Pod>::namespaced(self.client.clone(), &self.ns).list(&ListParams::default()).await {
                Ok(l) => l.items,
                Err(_) => return Err(()),
            };
        let vmi = match self.vmis().get_opt(&self.vmi).await {
            Ok(Some(v)) => serde_json::to_value(v).unwrap(),
            Ok(None) => return Ok(None),
            Err(_) => return Err(()),
        };
        let (result, requeue) = self.sync(&vmi, &pods).await;
        if self.update_status(&vmi, result.as_ref().err()).await.is_err() {
            return Err(());
        }
        match result {
            Ok(()) => Ok(requeue),
            Err(_) => Err(()),
        }
    }

    /// lifecycle.go `sync`, the attachment-pod parts.
    async fn sync(&mut self, vmi: &Value, pods: &[Pod]) -> (Result<(), SyncError>, Option<Duration>) {
        let vmi_uid = vmi["metadata"]["uid"].as_str().unwrap_or_default();
        if matches!(vmi["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            // deleteAllAttachmentPods
            if let Some(launcher) = current_vmi_pod(vmi, pods) {
                for ap in attachment_pods(launcher, pods) {
                    if let Err(e) = self.delete_attachment_pod(vmi, ap, "deleteAllAttachmentPods").await {
                        let message = format!("failed to delete attachment pods: {e}");
                        return (Err(SyncError { reason: "FailedHotplugSync", message }), None);
                    }
                }
            }
            return (Ok(()), None);
        }
        // deleteOrphanedAttachmentPods: errors are logged, the sync goes on.
        for launcher in pods.iter().filter(|p| controlled_by(p, vmi_uid) && pod_is_down(p)) {
            for ap in attachment_pods(launcher, pods) {
                let _ = self.delete_attachment_pod(vmi, ap, "deleteOrphanedAttachmentPods").await;
            }
        }
        let Some(launcher) = current_vmi_pod(vmi, pods) else { return (Ok(()), None) };
        if !is_pod_ready(launcher) || launcher.metadata.deletion_timestamp.is_some() {
            return (Ok(()), None);
        }
        let hotplug = hotplug_volumes(vmi, launcher);
        let aps = attachment_pods(launcher, pods);
        if !needs_handle_hotplug(&hotplug, &aps) {
            return (Ok(()), None);
        }
        // handleHotplugVolumes, every PVC taken as ready to attach.
        let (current, old) = active_and_old(&hotplug, &aps);
        self.cleanup_attachment_pods(current, old, vmi, hotplug.len()).await
    }

    /// volume-hotplug.go `cleanupAttachmentPods` (with the gate for `Cleanup::Gated`).
    async fn cleanup_attachment_pods(
        &mut self,
        current: Option<&Pod>,
        old: Vec<&Pod>,
        vmi: &Value,
        num_ready: usize,
    ) -> (Result<(), SyncError>, Option<Duration>) {
        let mut status: BTreeMap<String, String> = BTreeMap::new();
        for vs in vmi["status"]["volumeStatus"].as_array().into_iter().flatten() {
            if vs.get("hotplugVolume").is_some_and(|h| !h.is_null()) {
                status.insert(
                    vs["name"].as_str().unwrap_or_default().into(),
                    vs["phase"].as_str().unwrap_or_default().into(),
                );
            }
        }
        let mut spec_hotplug = BTreeSet::new();
        for v in vmi["spec"]["volumes"].as_array().into_iter().flatten() {
            if is_hotplug_volume(v) {
                let name = v["name"].as_str().unwrap_or_default().to_string();
                status.remove(&name);
                spec_hotplug.insert(name);
            }
        }
        let current_not_running = current.is_none_or(|c| phase(c) != "Running");
        let mut found_running = false;
        let mut gate_requeue: Option<Duration> = None;
        let mut leases: HashMap<String, (Value, Option<String>)> = HashMap::new();
        for pod in old {
            if !found_running
                && phase(pod) == "Running"
                && pod.metadata.deletion_timestamp.is_none()
                && num_ready > 0
                && current_not_running
                && contains_volumes_to_preserve(pod, &status, &spec_hotplug)
            {
                found_running = true;
                continue;
            }
            let not_ready_for_delete = pod_volume_names(pod)
                .iter()
                .filter(|v| status.get(*v).is_some_and(|phase| !volume_ready_for_pod_delete(phase)))
                .count();
            if not_ready_for_delete > 0 {
                continue;
            }
            if self.cleanup == Cleanup::Gated {
                let d = self.gate(vmi, current, pod, &mut leases).await;
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.stats.lock().unwrap().gate.push((name.clone(), d.clone(), Instant::now()));
                if !d.allowed {
                    if d.reason == "HandoffUnsafe" {
                        let message = format!("Keeping attachment pod {name}: {}", d.message);
                        self.record(vmi, "Warning", "HandoffUnsafe", message).await;
                    }
                    let after = Duration::from_secs_f64(d.requeue_after_seconds);
                    if !after.is_zero() && gate_requeue.is_none_or(|g| after < g) {
                        gate_requeue = Some(after);
                    }
                    continue;
                }
                if matches!(d.reason.as_str(), "AgentDeadlineExceeded" | "ConditionWaitExceeded") {
                    let message = format!("Deleting attachment pod {name} anyway: {}", d.message);
                    self.record(vmi, "Warning", &d.reason, message).await;
                }
            }
            if let Err(e) = self.delete_attachment_pod(vmi, pod, "cleanupAttachmentPods").await {
                let message = format!("Error deleting attachment pod {e}");
                return (Err(SyncError { reason: "FailedDelete", message }), gate_requeue);
            }
        }
        (Ok(()), gate_requeue)
    }

    /// The patched controller's lease read and the gate's decision (gate-decide).
    async fn gate(
        &mut self,
        vmi: &Value,
        current: Option<&Pod>,
        old: &Pod,
        leases: &mut HashMap<String, (Value, Option<String>)>,
    ) -> Decision {
        let node = old
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| vmi["status"]["nodeName"].as_str().unwrap_or_default().to_string());
        if !leases.contains_key(&node) {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), "hotplug-watchdog");
            let read = match api.get_opt(&format!("hotplug-watchdog-{node}")).await {
                Ok(Some(l)) => {
                    let l = serde_json::to_value(l).unwrap();
                    self.last_lease.insert(node.clone(), l.clone());
                    (l, None)
                }
                Ok(None) => {
                    self.last_lease.remove(&node);
                    (Value::Null, None)
                }
                Err(e) => (self.last_lease.get(&node).cloned().unwrap_or(Value::Null), Some(e.to_string())),
            };
            leases.insert(node.clone(), read);
        }
        let (lease, lease_error) = leases[&node].clone();
        let mut input = json!({
            "vmi": vmi,
            "currentPod": current.map(|c| serde_json::to_value(c).unwrap()),
            "oldPod": serde_json::to_value(old).unwrap(),
            "lease": lease,
            "now": Timestamp::now().to_string(),
        });
        if let Some(e) = lease_error {
            input["leaseError"] = json!(e);
        }
        tokio::task::spawn_blocking(move || gate_decide::decide(&input)).await.unwrap()
    }

    /// volume-hotplug.go `deleteAttachmentPod` and lifecycle.go `deletePod`.
    async fn delete_attachment_pod(&mut self, vmi: &Value, pod: &Pod, path: &'static str) -> Result<(), String> {
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        let result = api.delete(&name, &dp).await;
        let refused = match &result {
            Ok(_) => None,
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(kube::Error::Api(e)) => Some(e.message.clone()),
            Err(e) => Some(e.to_string()),
        };
        self.stats.lock().unwrap().attempts.push(Attempt {
            pod: name.clone(),
            at: Instant::now(),
            path,
            handoff_seen: handoff(pod),
            refused: refused.clone(),
        });
        match refused {
            None => {
                self.record(vmi, "Normal", "SuccessfulDelete", format!("Deleted attachment pod {name}")).await;
                Ok(())
            }
            Some(message) => {
                self.record(vmi, "Warning", "FailedDelete", format!("Failed to delete attachment pod {name}")).await;
                Err(message)
            }
        }
    }

    /// `updateStatus`, as far as a sync error goes: `CheckFailure` on the Synchronized
    /// condition, written with an Update of the VMI when it changed. Only for a VMI that is
    /// neither Running nor Scheduled: for those ("owned by virt-handler") v1.9.0 writes its
    /// other status changes as a patch and returns before `CheckFailure` (lifecycle.go), so
    /// a refused delete of a running VM's attachment pod never shows in `Synchronized`, as
    /// the conformance lane saw the real controller do (docs/conformance.md).
    async fn update_status(&mut self, vmi: &Value, err: Option<&SyncError>) -> Result<(), ()> {
        if matches!(vmi["status"]["phase"].as_str(), Some("Running" | "Scheduled")) {
            return Ok(());
        }
        let conditions: Vec<Value> = vmi["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let synchronized = conditions.iter().find(|c| c["type"] == "Synchronized");
        let new: Vec<Value> = match err {
            Some(e)
                if synchronized.is_some_and(|c| c["status"] == "False" && c["reason"].as_str() == Some(e.reason)) =>
            {
                return Ok(())
            }
            Some(e) => {
                let mut c: Vec<Value> = conditions.iter().filter(|c| c["type"] != "Synchronized").cloned().collect();
                c.push(json!({"type": "Synchronized", "status": "False", "reason": e.reason, "message": e.message,
                    "lastTransitionTime": Timestamp::now().to_string()}));
                c
            }
            None if synchronized.is_some() => {
                conditions.iter().filter(|c| c["type"] != "Synchronized").cloned().collect()
            }
            None => return Ok(()),
        };
        let mut updated = vmi.clone();
        updated["status"]["conditions"] = json!(new);
        let obj: DynamicObject = serde_json::from_value(updated).unwrap();
        self.stats.lock().unwrap().vmi_writes += 1;
        self.vmis().replace(&self.vmi, &PostParams::default(), &obj).await.map(|_| ()).map_err(|_| ())
    }

    /// client-go's event recorder on the VMI: `EventCorrelator` folds a repeated event into
    /// a count (a patch), and its spam filter lets 25 events per object through, then one
    /// per 5 minutes.
    async fn record(&mut self, vmi: &Value, type_: &str, reason: &str, message: String) {
        let key = (type_.to_string(), reason.to_string(), message.clone());
        let count = {
            let mut s = self.stats.lock().unwrap();
            let n = s.events.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if !self.recorder.take() {
            self.stats.lock().unwrap().events_dropped += 1;
            return;
        }
        let now = Time(Timestamp::now());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let result = match self.recorder.names.get(&key) {
            Some(name) => {
                let patch = json!({"count": count, "lastTimestamp": now});
                events.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            }
            None => {
                let name = format!("{}.{:x}", self.vmi, Timestamp::now().as_nanosecond());
                let event = Event {
                    metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
                    involved_object: ObjectReference {
                        api_version: Some("kubevirt.io/v1".into()),
                        kind: Some("VirtualMachineInstance".into()),
                        name: Some(self.vmi.clone()),
                        namespace: Some(self.ns.clone()),
                        uid: vmi["metadata"]["uid"].as_str().map(String::from),
                        ..Default::default()
                    },
                    reason: Some(reason.into()),
                    message: Some(message),
                    type_: Some(type_.into()),
                    count: Some(count as i32),
                    first_timestamp: Some(now.clone()),
                    last_timestamp: Some(now),
                    source: Some(k8s_openapi::api::core::v1::EventSource {
                        component: Some("virtualmachine-controller".into()),
                        host: None,
                    }),
                    ..Default::default()
                };
                self.recorder.names.insert(key, name);
                events.create(&PostParams::default(), &event).await.map(|_| ())
            }
        };
        let mut s = self.stats.lock().unwrap();
        if result.is_ok() {
            s.event_writes += 1;
            s.event_write_times.push(Instant::now());
        }
    }
}

/// The event recorder's state for one VMI: the spam filter's token bucket and the name of
/// each distinct event written.
struct Recorder {
    tokens: f64,
    refilled: Instant,
    names: HashMap<(String, String, String), String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { tokens: 25.0, refilled: Instant::now(), names: HashMap::new() }
    }
}

impl Recorder {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() / 300.0).min(25.0);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// ------------------------------------------------------------ v1.9.0's helpers, on API objects

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn controlled_by(p: &Pod, uid: &str) -> bool {
    p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// controller.go `PodIsDown`.
fn pod_is_down(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// controller.go `IsPodReady` (no container statuses without a kubelet: the phase decides).
fn is_pod_ready(p: &Pod) -> bool {
    !pod_is_down(p) && p.metadata.deletion_timestamp.is_none() && phase(p) == "Running"
}

fn created(p: &Pod) -> Timestamp {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_default()
}

/// controller.go `CurrentVMIPod`: the newest pod the VMI controls on the VMI's node.
fn current_vmi_pod<'a>(vmi: &Value, pods: &'a [Pod]) -> Option<&'a Pod> {
    let uid = vmi["metadata"]["uid"].as_str().unwrap_or_default();
    let node = vmi["status"]["nodeName"].as_str().unwrap_or_default();
    let mut cur: Option<&Pod> = None;
    for p in pods.iter().filter(|p| controlled_by(p, uid)) {
        if !node.is_empty() && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        if cur.is_none_or(|c| created(c) < created(p)) {
            cur = Some(p);
        }
    }
    cur
}

/// controller.go `AttachmentPods`: the pods whose controller is the launcher (by owner only).
fn attachment_pods<'a>(launcher: &Pod, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let uid = launcher.metadata.uid.as_deref().unwrap_or_default();
    pods.iter().filter(|p| controlled_by(p, uid)).collect()
}

fn pod_volume_names(p: &Pod) -> Vec<String> {
    p.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten().map(|v| v.name.clone()).collect()
}

/// storage/types `IsHotplugVolume`.
fn is_hotplug_volume(v: &Value) -> bool {
    v["persistentVolumeClaim"]["hotpluggable"] == true
        || v["dataVolume"]["hotpluggable"] == true
        || v["memoryDump"]["hotpluggable"] == true
}

/// storage/types `GetHotplugVolumes`: the VMI's PVC, DataVolume and memory-dump volumes the
/// launcher pod does not have, and its utility volumes.
fn hotplug_volumes(vmi: &Value, launcher: &Pod) -> Vec<String> {
    let in_launcher: BTreeSet<String> = pod_volume_names(launcher).into_iter().collect();
    let mut out = Vec::new();
    for v in vmi["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        let hotpluggable_source =
            v.get("persistentVolumeClaim").is_some() || v.get("dataVolume").is_some() || v.get("memoryDump").is_some();
        if hotpluggable_source && !in_launcher.contains(name) {
            out.push(name.to_string());
        }
    }
    for v in vmi["spec"]["utilityVolumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        if !in_launcher.contains(name) {
            out.push(name.to_string());
        }
    }
    out
}

/// volume-hotplug.go `podVolumesMatchesReadyVolumes`, "-2" (the emptyDir and the token) included.
fn pod_volumes_match(p: &Pod, volumes: &[String]) -> bool {
    let all = p.spec.as_ref().and_then(|s| s.volumes.as_ref()).map_or(0, Vec::len);
    if all as i64 - 2 != volumes.len() as i64 {
        return false;
    }
    let mut pvcs: BTreeSet<String> = p
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| v.persistent_volume_claim.is_some())
        .map(|v| v.name.clone())
        .collect();
    for v in volumes {
        pvcs.remove(v);
    }
    pvcs.is_empty()
}

/// volume-hotplug.go `needsHandleHotplug`.
fn needs_handle_hotplug(hotplug: &[String], aps: &[&Pod]) -> bool {
    if aps.len() > 1 {
        return true;
    }
    if aps.len() == 1 && pod_volumes_match(aps[0], hotplug) {
        return false;
    }
    !hotplug.is_empty() || !aps.is_empty()
}

/// volume-hotplug.go `getActiveAndOldAttachmentPods`: old pods newest first.
fn active_and_old<'a>(ready: &[String], aps: &[&'a Pod]) -> (Option<&'a Pod>, Vec<&'a Pod>) {
    let mut current = None;
    let mut old = Vec::new();
    for p in aps {
        if !pod_volumes_match(p, ready) {
            old.push(*p);
        } else if p.metadata.deletion_timestamp.is_none() {
            current = Some(*p);
        }
    }
    old.sort_by_key(|p| std::cmp::Reverse(created(p)));
    (current, old)
}

/// volume-hotplug.go `volumeReadyForPodDelete`.
fn volume_ready_for_pod_delete(phase: &str) -> bool {
    !matches!(phase, "Ready" | "MountedToPod")
}

/// volume-hotplug.go `podContainsVolumesToPreserve`.
fn contains_volumes_to_preserve(p: &Pod, status: &BTreeMap<String, String>, spec: &BTreeSet<String>) -> bool {
    pod_volume_names(p)
        .iter()
        .any(|v| spec.contains(v) || status.get(v).is_some_and(|phase| !volume_ready_for_pod_delete(phase)))
}

fn handoff(p: &Pod) -> Option<(String, String)> {
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "hotplug-watchdog.io/HandoffSafe")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}
