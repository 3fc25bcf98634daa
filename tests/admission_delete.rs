//! The API server holds an unsafe attachment-pod deletion (deploy/handoff-hold-policy.yaml),
//! on a real kube-apiserver with real loop devices and the real agent, against KubeVirt's
//! own delete call: support/controller.rs imitates KubeVirt v1.9.0's controller, which
//! deletes as `system:serviceaccount:kubevirt:kubevirt-controller` (impersonated here), by
//! name, with grace period 0, and on refusal records FailedDelete, sets the VMI's
//! Synchronized condition and retries with client-go's backoff.
//!
//! What is shown, each test able to fail; no timed assertions (waits are bounded, figures
//! are printed):
//! - a new device per pod: refused, the old pod kept, nothing vanishes, and the refusal,
//!   the VMI's condition and the pod's condition name the reason;
//! - one shared device: allowed once the agent sees the new pod serve it (the release
//!   latency from the new pod's device appearing is printed);
//! - a final VMI, a failed launcher, a migration's source launcher that is done: allowed as
//!   soon as the agent's condition says so, never held;
//! - the garbage collector's cascade (background and foreground): never refused, even on a
//!   pod whose condition says False;
//! - no agent on the node (no condition): never refused;
//! - who and what is never refused: everyone but KubeVirt's controller, True, Unknown, no
//!   condition, a WaitForFirstConsumer trigger pod, a pod already being deleted;
//! - an agent dead after writing False: the pod stays held, and the API server counts each
//!   refusal in `apiserver_validating_admission_policy_check_total`, the series the alert
//!   HotplugAttachmentPodHeld reads (and an evaluation error in the one
//!   HotplugHandoffHoldPolicyErrors reads);
//! - the documented overlays (KubeVirt in another namespace, [Warn, Audit], off) render and
//!   do what docs/install.md says.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

use support::control_plane::ControlPlane;
use support::controller::{
    self, AbortOnDrop, Cleanup, KubeVirtController, Stats, CONTROLLER_USER, GC_USER, HOLD_POLICY,
};
use support::kubevirt::*;
use support::*;

const OLD: &str = "hp-volume-aaaaa";
const NEW: &str = "hp-volume-bbbbb";
const WAIT: Duration = Duration::from_secs(30);

/// A VM whose hotplugged disk1 comes from `OLD` on a real loop device, on a control plane
/// with the hold installed, and (with `agent`) the agent watching the node.
struct Setup {
    cp: ControlPlane,
    vm: HotplugVm,
    tree: KubeletTree,
    old_uid: String,
    old_dev: LoopDevice,
    agent: Option<Agent>,
}

fn setup(with_agent: bool) -> Setup {
    let cp = ControlPlane::start();
    controller::install_hold_policy(&cp);
    let vm = create_hotplug_vm(&cp, NS, "vm1", NODE, &["disk1"]);
    let launcher = (vm.launcher.as_str(), vm.launcher_uid.as_str());
    let old_uid = cp.rt.block_on(create_hp_pod(&cp, &vm, launcher, OLD, NODE, &["disk1"], json!({})));
    let tree = KubeletTree::new();
    let old_dev = LoopDevice::add();
    tree.hotplugged(&vm.launcher_uid, &old_uid, "disk1", old_dev.dev());
    set_pod_phase(&cp, NS, OLD, "Running");
    set_volume_status(&cp, &vm, &[("disk1", "Ready", OLD, &old_uid)]);
    let agent = with_agent.then(|| {
        let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
        agent.wait_until("disk1 ready and a condition on the old pod", WAIT, |a| {
            volume_state(&a.report(), &vm.launcher_uid, "disk1").as_deref() == Some("ready")
                && handoff_condition(&cp, NS, OLD).is_some()
        });
        assert_eq!(
            handoff_condition(&cp, NS, OLD),
            Some(("False".into(), "SoleBacker".into())),
            "the lone pod serving disk1"
        );
        // In a cluster the old pod's condition was written long before the next hotplug;
        // the agent writes a pod's conditions at most once a second.
        std::thread::sleep(Duration::from_millis(1200));
        agent
    });
    Setup { cp, vm, tree, old_uid, old_dev, agent }
}

/// The user hotplugs disk2 (support/kubevirt.rs): the new attachment pod `NEW`. Returns
/// the new pod's devices and when they appeared.
fn hotplug_disk2(s: &Setup, shared: bool) -> (Option<LoopDevice>, LoopDevice, Instant) {
    let h = support::kubevirt::hotplug_disk2(&s.cp, &s.tree, &s.vm, NEW, s.old_dev.dev(), shared);
    (h.disk1_new, h.disk2, h.appeared)
}

/// Every change of a pod's HandoffSafe condition, as an API watch sees it: (status, reason,
/// when seen).
/// The HandoffSafe condition of one pod as its own watch stream saw it change, ending with
/// the condition the pod carried when it was deleted. One stream is ordered by
/// resourceVersion, so "said True before the delete" is read from it alone, never by comparing
/// its clock with another watcher's (two streams may deliver in either order).
struct ConditionLog(Arc<Mutex<Vec<Seen>>>, #[allow(dead_code)] AbortOnDrop);

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Condition {
        status: String,
        reason: String,
        at: Instant,
    },
    /// The pod is gone; the condition is its last one (the object the admission policy read).
    Deleted {
        status: String,
        reason: String,
    },
}

fn handoff_of(p: &Pod) -> (String, String) {
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "hotplug-watchdog.io/HandoffSafe"));
    c.map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default())).unwrap_or_default()
}

impl ConditionLog {
    fn start(cp: &ControlPlane, ns: &str, pod: &str) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let api: Api<Pod> = Api::namespaced(cp.admin.clone(), ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={pod}"));
        let out = log.clone();
        let task = cp.rt.spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(e) = stream.next().await {
                let seen = match e {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let (status, reason) = handoff_of(&p);
                        Seen::Condition { status, reason, at: Instant::now() }
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        let (status, reason) = handoff_of(&p);
                        Seen::Deleted { status, reason }
                    }
                    _ => continue,
                };
                let mut v = out.lock().unwrap();
                let changed = match (v.last(), &seen) {
                    (Some(Seen::Condition { status, reason, .. }), Seen::Condition { status: s, reason: r, .. }) => {
                        status != s || reason != r
                    }
                    _ => true,
                };
                if changed {
                    v.push(seen);
                }
            }
        });
        ConditionLog(log, AbortOnDrop(task))
    }

    /// When the condition was first seen as (status, reason), if that was before the pod's
    /// deletion; panics with the whole log otherwise. Also checks that the deleted object
    /// carried (status, reason): the state the admission policy let through.
    fn said_before_deleted(&self, status: &str, reason: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.0.lock().unwrap().clone();
            if let Some(i) = log.iter().position(|e| matches!(e, Seen::Deleted { .. })) {
                let Seen::Deleted { status: s, reason: r } = &log[i] else { unreachable!() };
                assert_eq!((s.as_str(), r.as_str()), (status, reason), "deleted with another condition: {log:#?}");
                return log[..i]
                    .iter()
                    .find_map(|e| match e {
                        Seen::Condition { status: s, reason: r, at } if s == status && r == reason => Some(*at),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("deleted before the agent said {status} ({reason}): {log:#?}"));
            }
            assert!(Instant::now() < deadline, "the condition log never saw the deletion: {log:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every refusal the controller met names the agent's stale verdict (it was still False,
/// SoleBacker) and the policy; returns how many there were.
fn refusals_name_sole_backer(stats: &Stats, pod: &str) -> usize {
    let refusals: Vec<_> = stats.refusals().into_iter().filter(|a| a.pod == pod).collect();
    for r in &refusals {
        let message = r.refused.as_deref().unwrap();
        assert!(
            message.contains(HOLD_POLICY) && message.contains("SoleBacker"),
            "refused for another reason: {message}"
        );
    }
    refusals.len()
}

fn nothing_vanished(s: &Setup) {
    let agent = s.agent.as_ref().unwrap();
    assert_eq!(volume_state(&agent.report(), &s.vm.launcher_uid, "disk1").as_deref(), Some("ready"));
    let series = format!(
        "hotplug_watchdog_device_vanished_total{{pod_uid=\"{}\",volume=\"disk1\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"{}\"}}",
        s.vm.launcher_uid, s.vm.launcher
    );
    assert_eq!(metric_opt(&agent.metrics(), &series), None, "the agent counted a vanished disk1");
}

fn synchronized(cp: &ControlPlane, vm: &HotplugVm) -> Option<(String, String, String)> {
    cp.rt.block_on(async {
        let vmi = vmi_api_in(cp, &vm.ns).get(&vm.name).await.unwrap();
        let c = vmi.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Synchronized")?.clone();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        Some((s("status"), s("reason"), s("message")))
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

// ------------------------------------------------------------------------- the handoff

#[test]
fn a_new_device_per_pod_is_held_and_the_operator_sees_why() {
    if !require_root("a_new_device_per_pod_is_held_and_the_operator_sees_why") {
        return;
    }
    let s = setup(true);
    let ctl = KubeVirtController::start(&s.cp, NS, "vm1", Cleanup::V190);
    let (_disk1_new, _disk2, _) = hotplug_disk2(&s, false);
    ctl.wait_until("three refused DELETEs of the old pod", WAIT, |st| {
        st.refusals().iter().filter(|a| a.pod == OLD).count() >= 3
    });
    // Give the controller time for one more retry, then look.
    std::thread::sleep(Duration::from_millis(500));
    let stats = ctl.stop(&s.cp);

    // Refused, every time, and the old pod is still there.
    assert!(pod_exists(&s.cp, NS, OLD), "the old attachment pod was deleted");
    assert_eq!(stats.deleted(OLD), None);
    let refusals = refusals_name_sole_backer(&stats, OLD);
    assert_eq!(refusals, stats.attempts.iter().filter(|a| a.pod == OLD).count(), "a DELETE went through: {stats:#?}");
    // The operator sees why: the refusal names the volume and the device of the reason...
    let first = stats.refusals()[0].refused.clone().unwrap();
    let device = s.old_dev.dev().to_string();
    for needle in ["disk1", device.as_str(), "docs/alerts.md#hotplugattachmentpodheld", "vms/hp-volume-aaaaa"] {
        assert!(first.contains(needle), "the refusal does not name {needle}: {first}");
    }
    // ...so does the VMI's Synchronized condition KubeVirt sets from the error...
    let (status, reason, message) = synchronized(&s.cp, &s.vm).expect("Synchronized on the VMI");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FailedDelete"));
    assert!(message.contains("SoleBacker") && message.contains(&device), "{message}");
    // ...and the pod's own condition; KubeVirt's Event says only that the delete failed.
    assert_eq!(handoff_condition(&s.cp, NS, OLD), Some(("False".into(), "SoleBacker".into())));
    let failed = ("Warning".to_string(), "FailedDelete".to_string(), format!("Failed to delete attachment pod {OLD}"));
    assert_eq!(stats.events.get(&failed).copied(), Some(refusals as u32), "{:?}", stats.events);
    // Nothing vanished; the agent's own metrics say what the alert HotplugHandoffUnsafe reads.
    nothing_vanished(&s);
    let metrics = s.agent.as_ref().unwrap().metrics();
    let pod = format!("{{pod_uid=\"{}\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"{OLD}\"}}", s.old_uid);
    assert_eq!(metric(&metrics, &format!("hotplug_watchdog_attachment_pod_superseded{pod}")), 1.0);
    assert_eq!(metric(&metrics, &format!("hotplug_watchdog_attachment_pod_handoff_safe{pod}")), 0.0);
    eprintln!("a new device per pod: {refusals} DELETEs refused, first: {first}");
}

#[test]
fn a_shared_device_is_released_once_the_new_pod_serves_it() {
    if !require_root("a_shared_device_is_released_once_the_new_pod_serves_it") {
        return;
    }
    let s = setup(true);
    let log = ConditionLog::start(&s.cp, NS, OLD);
    let ctl = KubeVirtController::start(&s.cp, NS, "vm1", Cleanup::V190);
    let (_, _disk2, appeared) = hotplug_disk2(&s, true);
    ctl.wait_until("the old pod deleted", WAIT, |st| st.deleted(OLD).is_some());
    let stats = ctl.stop(&s.cp);
    let deleted = stats.deleted(OLD).unwrap();
    assert!(!pod_exists(&s.cp, NS, OLD));
    let refusals = refusals_name_sole_backer(&stats, OLD);
    let released = log.said_before_deleted("True", "DevicesServedElsewhere");
    nothing_vanished(&s);
    eprintln!(
        "shared device: released {} after the new pod's device appeared (condition True after {}), {refusals} DELETEs refused before",
        ms(deleted - appeared),
        ms(released.saturating_duration_since(appeared))
    );
}

/// The VMI, a launcher or a migration source that is done: the controller's DELETE of the
/// lone attachment pod (the agent's condition on it said False, SoleBacker, while the VM ran)
/// goes through as soon as the agent's condition says `reason`, without a hold: every
/// refusal before that names the old reason.
fn released_without_a_hold(s: &Setup, reason: &str, change: impl FnOnce()) {
    let log = ConditionLog::start(&s.cp, NS, OLD);
    let ctl = KubeVirtController::start(&s.cp, NS, "vm1", Cleanup::V190);
    // The controller has nothing to do yet: one attachment pod, matching the spec.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ctl.stats().attempts.len(), 0);
    let t0 = Instant::now();
    change();
    ctl.wait_until("the old pod deleted", WAIT, |st| st.deleted(OLD).is_some());
    let stats = ctl.stop(&s.cp);
    let deleted = stats.deleted(OLD).unwrap();
    assert!(!pod_exists(&s.cp, NS, OLD));
    let refusals = refusals_name_sole_backer(&stats, OLD);
    let said = log.said_before_deleted("True", reason);
    assert!(stats.attempts.iter().all(|a| a.pod == OLD), "{stats:#?}");
    eprintln!(
        "{reason}: the agent said True after {}, the DELETE ({}) went through after {}; {refusals} refused before",
        ms(said.saturating_duration_since(t0)),
        stats.attempts.last().unwrap().path,
        ms(deleted - t0)
    );
}

#[test]
fn a_final_vmi_is_not_held() {
    if !require_root("a_final_vmi_is_not_held") {
        return;
    }
    let s = setup(true);
    released_without_a_hold(&s, "VMIFinal", || patch_vmi(&s.cp, &s.vm, json!({"status": {"phase": "Succeeded"}})));
}

#[test]
fn a_failed_launcher_is_not_held() {
    if !require_root("a_failed_launcher_is_not_held") {
        return;
    }
    let s = setup(true);
    released_without_a_hold(&s, "LauncherGone", || set_pod_phase(&s.cp, NS, &s.vm.launcher, "Failed"));
}

#[test]
fn a_migration_source_that_is_done_is_not_held() {
    if !require_root("a_migration_source_that_is_done_is_not_held") {
        return;
    }
    let s = setup(true);
    let (cp, vm) = (&s.cp, &s.vm);
    // The target: a launcher on node-2 with its own attachment pod, running; the VMI moves.
    let target = "virt-launcher-vm1-fghij";
    let target_uid = cp.rt.block_on(create_launcher(cp, vm, target, "node-2"));
    set_pod_phase(cp, NS, target, "Running");
    let target_ap = cp.rt.block_on(create_hp_pod(
        cp,
        vm,
        (target, &target_uid),
        "hp-volume-ccccc",
        "node-2",
        &["disk1"],
        json!({}),
    ));
    set_pod_phase(cp, NS, "hp-volume-ccccc", "Running");
    released_without_a_hold(&s, "LauncherGone", || {
        patch_vmi(
            cp,
            vm,
            json!({"metadata": {"labels": {"kubevirt.io/nodeName": "node-2"}},
                "status": {"nodeName": "node-2", "migrationState": {"completed": true, "sourceNode": NODE,
                    "targetNode": "node-2", "targetPod": target, "targetAttachmentPodUID": target_ap}}}),
        );
        set_pod_phase(cp, NS, &vm.launcher, "Succeeded");
    });
    assert!(pod_exists(cp, NS, "hp-volume-ccccc"), "the target's attachment pod stays");
}

#[test]
fn no_agent_on_the_node_is_never_held() {
    if !require_root("no_agent_on_the_node_is_never_held") {
        return;
    }
    let s = setup(false);
    assert_eq!(handoff_condition(&s.cp, NS, OLD), None);
    let ctl = KubeVirtController::start(&s.cp, NS, "vm1", Cleanup::V190);
    let (_disk1_new, _disk2, _) = hotplug_disk2(&s, false);
    ctl.wait_until("the old pod deleted", WAIT, |st| st.deleted(OLD).is_some());
    let stats = ctl.stop(&s.cp);
    assert!(!pod_exists(&s.cp, NS, OLD));
    assert_eq!(stats.refusals().len(), 0, "refused without a condition: {stats:#?}");
    assert_eq!(stats.attempts.len(), 1, "v1.9.0's rule: one DELETE as soon as the new pod runs");
}

// ------------------------------------------------------------- who and what is never refused

/// RBAC to delete pods for identities that are not KubeVirt's controller.
fn grant_pod_delete(cp: &ControlPlane, users: &[&str]) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let subjects: Vec<_> = users
        .iter()
        .map(|u| match u.strip_prefix("system:serviceaccount:") {
            Some(rest) => {
                let (ns, name) = rest.split_once(':').unwrap();
                json!({"kind": "ServiceAccount", "name": name, "namespace": ns})
            }
            None => json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}),
        })
        .collect();
    cp.rt.block_on(async {
        let pp = PostParams::default();
        let role = json!({"metadata": {"name": "test:pod-deleter"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete", "patch", "update"]}]});
        Api::<ClusterRole>::all(cp.admin.clone()).create(&pp, &serde_json::from_value(role).unwrap()).await.unwrap();
        let binding = json!({"metadata": {"name": "test:pod-deleter"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test:pod-deleter"},
            "subjects": subjects});
        Api::<ClusterRoleBinding>::all(cp.admin.clone())
            .create(&pp, &serde_json::from_value(binding).unwrap())
            .await
            .unwrap();
    });
}

/// A pod labelled as an attachment pod, with `condition` (status, reason) written as the
/// agent would (through pods/status), `annotations` and a finalizer when `finalizer`.
fn pod_with(
    cp: &ControlPlane,
    name: &str,
    label: &str,
    condition: Option<(&str, &str)>,
    annotations: serde_json::Value,
) {
    cp.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
        let pod = json!({"metadata": {"name": name, "labels": {"kubevirt.io": label}, "annotations": annotations},
            "spec": {"nodeName": NODE, "containers": [{"name": "hotplug-disk", "image": "virt-launcher"}]}});
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
        if let Some((status, reason)) = condition {
            let patch = json!({"status": {"conditions": [{"type": "hotplug-watchdog.io/HandoffSafe", "status": status,
                "reason": reason, "message": format!("{reason} (written by the test)")}]}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch)).await.unwrap();
        }
    });
}

/// A dry-run DELETE as `user`, as KubeVirt sends it (by name, grace period 0): `Ok` or the
/// API server's message.
fn dry_run_delete(cp: &ControlPlane, user: &str, pod: &str) -> Result<(), String> {
    let client = cp.client_as(user);
    let dp = DeleteParams { dry_run: true, grace_period_seconds: Some(0), ..Default::default() };
    match cp.rt.block_on(Api::<Pod>::namespaced(client, NS).delete(pod, &dp)) {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message.clone()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn only_kubevirts_controller_is_refused_and_only_on_false() {
    let cp = ControlPlane::start();
    controller::install_hold_policy(&cp);
    cp.rt.block_on(async {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap())
            .await
            .unwrap();
    });
    let others = [
        GC_USER,
        "system:node:node-1",
        "system:serviceaccount:kubevirt:kubevirt-handler",
        "system:serviceaccount:kubevirt:kubevirt-apiserver",
        "system:serviceaccount:kubevirt-other:kubevirt-controller",
        "system:serviceaccount:vms:kubevirt-controller",
        "system:serviceaccount:kube-system:namespace-controller",
        "alice",
    ];
    grant_pod_delete(&cp, &others);

    pod_with(&cp, "hp-volume-false", "hotplug-disk", Some(("False", "SoleBacker")), json!({}));
    pod_with(&cp, "hp-volume-unknown", "hotplug-disk", Some(("Unknown", "MountTableMismatch")), json!({}));
    pod_with(&cp, "hp-volume-true", "hotplug-disk", Some(("True", "DevicesServedElsewhere")), json!({}));
    pod_with(&cp, "hp-volume-none", "hotplug-disk", None, json!({}));
    pod_with(
        &cp,
        "hp-volume-trigger",
        "hotplug-disk",
        Some(("False", "SoleBacker")),
        json!({"kubevirt.io/ephemeral-provisioning": "true"}),
    );
    pod_with(&cp, "virt-launcher-false", "virt-launcher", Some(("False", "SoleBacker")), json!({}));
    // A pod already being deleted: a finalizer keeps it while its deletion is pending.
    pod_with(&cp, "hp-volume-going", "hotplug-disk", Some(("False", "SoleBacker")), json!({}));
    cp.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
        let fin = json!({"metadata": {"finalizers": ["test.hotplug-watchdog.io/keep"]}});
        pods.patch("hp-volume-going", &PatchParams::default(), &Patch::Merge(&fin)).await.unwrap();
        pods.delete("hp-volume-going", &DeleteParams::default()).await.unwrap();
    });

    // KubeVirt's controller: refused on False alone, with the reason and message.
    let refused = dry_run_delete(&cp, CONTROLLER_USER, "hp-volume-false").expect_err("False must be refused");
    assert!(
        refused.contains(HOLD_POLICY) && refused.contains("SoleBacker: SoleBacker (written by the test)"),
        "{refused}"
    );
    for pod in [
        "hp-volume-unknown",
        "hp-volume-true",
        "hp-volume-none",
        "hp-volume-trigger",
        "virt-launcher-false",
        "hp-volume-going",
    ] {
        assert_eq!(dry_run_delete(&cp, CONTROLLER_USER, pod), Ok(()), "KubeVirt's controller deleting {pod}");
    }
    // Everyone else: never refused, even on False.
    for user in others {
        assert_eq!(dry_run_delete(&cp, user, "hp-volume-false"), Ok(()), "{user} deleting a pod that says False");
    }
    // The admin, for real: the release an operator may choose (docs/alerts.md).
    let gone = cp.rt.block_on(
        Api::<Pod>::namespaced(cp.admin.clone(), NS)
            .delete("hp-volume-false", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }),
    );
    assert!(gone.is_ok(), "{gone:?}");
    assert!(!pod_exists(&cp, NS, "hp-volume-false"));
}

#[test]
fn the_garbage_collectors_cascade_is_never_refused() {
    if !require_root("the_garbage_collectors_cascade_is_never_refused") {
        return;
    }
    let mut s = setup(true);
    // The agent dies after writing False: its last word stays on the pod.
    drop(s.agent.take());
    assert_eq!(handoff_condition(&s.cp, NS, OLD), Some(("False".into(), "SoleBacker".into())));
    assert!(dry_run_delete(&s.cp, CONTROLLER_USER, OLD).is_err(), "KubeVirt's controller is refused on this pod");
    let cp = &s.cp;
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let gc: Api<Pod> = Api::namespaced(cp.client_as(GC_USER), NS);
    // What the garbage collector sends for a dependent whose owner is gone or going
    // (garbagecollector.go attemptToDeleteItem, operations.go deleteObject): DELETE by name
    // with UID and resourceVersion preconditions, background propagation (the attachment
    // pod has no dependents of its own). kube-controller-manager is not part of this control
    // plane: its DELETE is sent here as its ServiceAccount.
    let gc_delete = |pod: &str| {
        cp.rt.block_on(async {
            let p = pods.get(pod).await.unwrap();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: p.metadata.resource_version,
                }),
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            gc.delete(pod, &dp).await.map(|_| ()).map_err(|e| e.to_string())
        })
    };

    // Background: the launcher pod goes at once (the VMI was deleted, KubeVirt deleted its
    // launcher); then the collector deletes its dependents.
    cp.rt
        .block_on(pods.delete(
            &s.vm.launcher,
            &DeleteParams {
                grace_period_seconds: Some(0),
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            },
        ))
        .unwrap();
    assert!(!pod_exists(cp, NS, &s.vm.launcher));
    assert_eq!(gc_delete(OLD), Ok(()), "the collector's background cascade was refused");
    assert!(!pod_exists(cp, NS, OLD));

    // Foreground: a second VM; its launcher waits (finalizer foregroundDeletion) until the
    // collector has deleted the attachment pod (blockOwnerDeletion), then loses the finalizer.
    let vm2 = create_hotplug_vm(cp, NS, "vm2", NODE, &["disk1"]);
    let owner = (vm2.launcher.as_str(), vm2.launcher_uid.as_str());
    cp.rt.block_on(create_hp_pod(cp, &vm2, owner, "hp-volume-ddddd", NODE, &["disk1"], json!({})));
    set_pod_phase(cp, NS, "hp-volume-ddddd", "Running");
    let unsafe_ = json!({"status": {"conditions": [{"type": "hotplug-watchdog.io/HandoffSafe", "status": "False",
        "reason": "SoleBacker", "message": "only this pod serves the VM's disk1 (the dead agent's last word)"}]}});
    cp.rt.block_on(pods.patch_status("hp-volume-ddddd", &PatchParams::default(), &Patch::Strategic(&unsafe_))).unwrap();
    assert!(dry_run_delete(cp, CONTROLLER_USER, "hp-volume-ddddd").is_err());
    cp.rt
        .block_on(pods.delete(
            &vm2.launcher,
            &DeleteParams {
                grace_period_seconds: Some(0),
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..Default::default()
            },
        ))
        .unwrap();
    let launcher = cp.rt.block_on(pods.get(&vm2.launcher)).unwrap();
    assert!(
        launcher.metadata.finalizers.iter().flatten().any(|f| f == "foregroundDeletion"),
        "foreground deletion waits for the dependents: {:?}",
        launcher.metadata.finalizers
    );
    assert_eq!(gc_delete("hp-volume-ddddd"), Ok(()), "the collector's foreground cascade was refused");
    assert!(!pod_exists(cp, NS, "hp-volume-ddddd"));
    let done = json!({"metadata": {"finalizers": null}});
    cp.rt.block_on(gc.patch(&vm2.launcher, &PatchParams::default(), &Patch::Merge(&done))).unwrap();
    assert!(!pod_exists(cp, NS, &vm2.launcher));
}

// ------------------------------------------------------------- a dead agent, and the metric

#[test]
fn a_dead_agents_false_holds_and_the_api_server_counts_each_refusal() {
    if !require_root("a_dead_agents_false_holds_and_the_api_server_counts_each_refusal") {
        return;
    }
    let mut s = setup(true);
    // Nothing but this controller is refused from here on: the difference of the counter
    // over the run is its refusals, exactly.
    let before = controller::hold_checks(&s.cp.apiserver_metrics(), "deny");
    let ctl = KubeVirtController::start(&s.cp, NS, "vm1", Cleanup::V190);
    let (_disk1_new, _disk2, _) = hotplug_disk2(&s, false);
    ctl.wait_until("the first refusal", WAIT, |st| !st.refusals().is_empty());
    // The agent dies (SIGKILL): nothing will ever change the pod's condition again.
    drop(s.agent.take());
    let already = ctl.stats().refusals().len();
    ctl.wait_until("eight more refusals", Duration::from_secs(60), |st| st.refusals().len() >= already + 8);
    let stats = ctl.stop(&s.cp);
    let metrics = s.cp.apiserver_metrics();
    let after = controller::hold_checks(&metrics, "deny");
    assert!(pod_exists(&s.cp, NS, OLD), "held");
    assert_eq!(stats.deleted(OLD), None);
    refusals_name_sole_backer(&stats, OLD);
    let delta = after - before;
    assert_eq!(delta, stats.refusals().len() as f64, "the API server's count of refusals vs the controller's");
    // The series the alert reads, with the labels it uses.
    let series = metrics
        .lines()
        .find(|l| {
            l.starts_with("apiserver_validating_admission_policy_check_total{")
                && l.contains("enforcement_action=\"deny\"")
        })
        .expect("a deny series");
    for label in [
        "policy=\"hotplug-watchdog-handoff-hold\"",
        "policy_binding=\"hotplug-watchdog-handoff-hold\"",
        "error_type=\"invalid_error\"",
    ] {
        assert!(series.contains(label), "{label} not in {series}");
    }
    assert_eq!(controller::hold_checks(&metrics, "allow"), 0.0, "no evaluation error");
    eprintln!("the API server's counter: {series}");

    // An expression that cannot be evaluated lets the DELETE through (failurePolicy Ignore)
    // and is counted with enforcement_action="allow": HotplugHandoffHoldPolicyErrors.
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(s.cp.admin.clone());
    let mut policy = s.cp.rt.block_on(vaps.get(HOLD_POLICY)).unwrap();
    let spec = policy.spec.as_mut().unwrap();
    // A missing map key is an evaluation error on every attachment pod (a CEL `&&` with a
    // false side would hide it).
    spec.validations.as_mut().unwrap()[0].expression = "oldObject.metadata.labels['no-such-label'] == 'x'".into();
    s.cp.rt.block_on(vaps.replace(HOLD_POLICY, &PostParams::default(), &policy)).unwrap();
    let deadline = Instant::now() + WAIT;
    while dry_run_delete(&s.cp, CONTROLLER_USER, OLD).is_err() {
        assert!(Instant::now() < deadline, "the broken policy never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let errors = controller::hold_checks(&s.cp.apiserver_metrics(), "allow");
    assert!(errors >= 1.0, "an evaluation error is not counted as enforcement_action=\"allow\"");
}

// ------------------------------------------------------------------ the documented overlays

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The overlay docs/install.md shows under `<!-- overlay: NAME -->`, with its `resources:`
/// entry pointed at this repository's deploy/ (relative: kustomize wants that), in `dir`.
fn overlay_from_docs(name: &str, dir: &Path) -> PathBuf {
    let doc = std::fs::read_to_string(Path::new(REPO).join("docs/install.md")).unwrap();
    let marker = format!("<!-- overlay: {name} -->");
    let after = doc.split_once(&marker).unwrap_or_else(|| panic!("docs/install.md has no {marker}")).1;
    let block = after.split_once("```yaml\n").unwrap().1.split_once("```").unwrap().0;
    let deploy = Path::new(REPO).join("deploy");
    let overlay = dir.join(name);
    std::fs::create_dir_all(&overlay).unwrap();
    let up = "../".repeat(overlay.components().count() - 1);
    let relative = format!("{up}{}", deploy.strip_prefix("/").unwrap().display());
    let text = block.replace("path/to/hotplug-watchdog/deploy", &relative);
    assert_ne!(text, block, "the overlay in docs/install.md must name path/to/hotplug-watchdog/deploy");
    std::fs::write(overlay.join("kustomization.yaml"), text).unwrap();
    overlay
}

fn kustomize(cp: &ControlPlane, dir: &Path) -> Vec<serde_yaml::Value> {
    let out = std::process::Command::new(cp.kubectl()).arg("kustomize").arg(dir).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn find<'a>(objects: &'a [serde_yaml::Value], kind: &str) -> Option<&'a serde_yaml::Value> {
    objects.iter().find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(HOLD_POLICY))
}

#[test]
fn the_documented_overlays_do_what_the_docs_say() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();

    // Off: neither the policy nor its binding; everything else as in deploy/.
    let base = kustomize(&cp, &Path::new(REPO).join("deploy"));
    let off = kustomize(&cp, &overlay_from_docs("handoff-hold-off", dir.path()));
    assert!(
        find(&base, "ValidatingAdmissionPolicy").is_some() && find(&base, "ValidatingAdmissionPolicyBinding").is_some()
    );
    assert!(
        find(&off, "ValidatingAdmissionPolicy").is_none() && find(&off, "ValidatingAdmissionPolicyBinding").is_none()
    );
    assert_eq!(off.len(), base.len() - 2);

    // Roll-out: [Warn, Audit].
    let warn = kustomize(&cp, &overlay_from_docs("handoff-hold-warn", dir.path()));
    let binding = find(&warn, "ValidatingAdmissionPolicyBinding").unwrap();
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_yaml::from_str::<serde_yaml::Value>("[Warn, Audit]").unwrap()
    );

    // KubeVirt in another namespace: only the identity changes, every other match condition stays.
    let other = kustomize(&cp, &overlay_from_docs("handoff-hold-namespace", dir.path()));
    let policy = find(&other, "ValidatingAdmissionPolicy").unwrap();
    let conditions = policy["spec"]["matchConditions"].as_sequence().unwrap();
    let base_conditions =
        find(&base, "ValidatingAdmissionPolicy").unwrap()["spec"]["matchConditions"].as_sequence().unwrap();
    assert_eq!(conditions.len(), base_conditions.len(), "a match condition was lost: {conditions:?}");
    assert!(conditions[0]["expression"]
        .as_str()
        .unwrap()
        .contains("system:serviceaccount:openshift-cnv:kubevirt-controller"));
    assert_eq!(conditions[1..], base_conditions[1..]);

    // On the server: the other namespace's controller is refused, kubevirt's is not; then
    // the [Warn, Audit] binding lets it through with a warning, counted as warn and audit.
    let create_from = |objects: &[serde_yaml::Value]| {
        cp.rt.block_on(async {
            let pp = PostParams::default();
            let vaps: Api<ValidatingAdmissionPolicy> = Api::all(cp.admin.clone());
            let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(cp.admin.clone());
            let _ = vaps.delete(HOLD_POLICY, &DeleteParams::default()).await;
            let _ = bindings.delete(HOLD_POLICY, &DeleteParams::default()).await;
            let p = find(objects, "ValidatingAdmissionPolicy").unwrap();
            vaps.create(&pp, &serde_yaml::from_value(p.clone()).unwrap()).await.unwrap();
            let b = find(objects, "ValidatingAdmissionPolicyBinding").unwrap();
            bindings.create(&pp, &serde_yaml::from_value(b.clone()).unwrap()).await.unwrap();
        })
    };
    controller::install_hold_policy(&cp); // RBAC, the namespace's probe, then replaced:
    create_from(&other);
    let openshift = "system:serviceaccount:openshift-cnv:kubevirt-controller";
    grant_pod_delete(&cp, &[openshift]);
    cp.rt.block_on(async {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap())
            .await
            .unwrap();
    });
    pod_with(&cp, "hp-volume-false", "hotplug-disk", Some(("False", "SoleBacker")), json!({}));
    let deadline = Instant::now() + WAIT;
    while dry_run_delete(&cp, openshift, "hp-volume-false").is_ok() {
        assert!(Instant::now() < deadline, "the overlay's policy never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dry_run_delete(&cp, CONTROLLER_USER, "hp-volume-false"), Ok(()), "kubevirt's SA is not KubeVirt here");

    create_from(&warn);
    let before = cp.apiserver_metrics();
    let deadline = Instant::now() + WAIT;
    let said = loop {
        let out = std::process::Command::new(cp.kubectl())
            .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
            .args([
                "-n",
                NS,
                "delete",
                "pod",
                "hp-volume-false",
                "--grace-period=0",
                "--dry-run=server",
                "--as",
                CONTROLLER_USER,
            ])
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && said.contains("Warning: Validation failed for ValidatingAdmissionPolicy") {
            break said;
        }
        assert!(Instant::now() < deadline, "[Warn, Audit] never took effect: {said}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(said.contains("SoleBacker"), "{said}");
    let after = cp.apiserver_metrics();
    for action in ["warn", "audit"] {
        assert_eq!(controller::hold_checks(&after, action) - controller::hold_checks(&before, action), 1.0, "{action}");
    }
    assert!(pod_exists(&cp, NS, "hp-volume-false"), "a dry run deletes nothing");
}
