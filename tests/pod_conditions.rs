//! Conditions on attachment pods against a real kube-apiserver, with real loop devices:
//! they follow a hotplug swap, keep other owners' conditions, move lastTransitionTime only
//! on a change, correct stale ones at start, and cost nothing in a steady state. The
//! admission policy in deploy/ holds the agent to its own node and condition types.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use support::control_plane::ControlPlane;
use support::kubevirt::*;
use support::*;

const DEVICES_PRESENT: &str = "hotplug-watchdog.io/DevicesPresent";
const HANDOFF_SAFE: &str = "hotplug-watchdog.io/HandoffSafe";

fn condition(cp: &ControlPlane, pod: &str, type_: &str) -> Option<serde_json::Value> {
    cp.rt.block_on(async {
        let p = Api::<Pod>::namespaced(cp.admin.clone(), NS).get(pod).await.unwrap();
        let conds = p.status.and_then(|s| s.conditions).unwrap_or_default();
        conds.into_iter().find(|c| c.type_ == type_).map(|c| serde_json::to_value(c).unwrap())
    })
}

fn wait_condition(agent: &Agent, cp: &ControlPlane, pod: &str, type_: &str, status: &str) -> serde_json::Value {
    agent.wait_until(&format!("{pod} {type_}={status}"), Duration::from_secs(20), |_| {
        condition(cp, pod, type_).is_some_and(|c| c["status"] == status)
    });
    condition(cp, pod, type_).unwrap()
}

/// As an admin (or the kubelet) would: a status patch of the pod.
fn admin_set_condition(cp: &ControlPlane, pod: &str, cond: serde_json::Value) {
    cp.rt.block_on(async {
        let patch = json!({"status": {"conditions": [cond]}});
        Api::<Pod>::namespaced(cp.admin.clone(), NS)
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
    });
}

#[test]
fn conditions_follow_a_swap_and_leave_others_alone() {
    if !require_root("conditions_follow_a_swap_and_leave_others_alone") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    // Someone else's condition, and a stale one of ours claiming the pod is safe to delete.
    admin_set_condition(
        &cp,
        "hp-volume-aaaaa",
        json!({"type": "example.com/Other", "status": "True", "reason": "Theirs"}),
    );
    admin_set_condition(
        &cp,
        "hp-volume-aaaaa",
        json!({"type": HANDOFF_SAFE, "status": "True", "reason": "Stale", "message": "left over"}),
    );
    let (tree, mut old_dev) = node_with_disk1(&vm);
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    agent.wait_ready();

    // The stale condition is re-derived: the only pod serving the VM's disk is not safe.
    let h = wait_condition(&agent, &cp, "hp-volume-aaaaa", HANDOFF_SAFE, "False");
    assert_eq!(h["reason"], "SoleBacker");
    let p = wait_condition(&agent, &cp, "hp-volume-aaaaa", DEVICES_PRESENT, "True");
    assert_eq!(p["message"], format!("present: disk1 ({})", old_dev.dev()));
    let theirs = condition(&cp, "hp-volume-aaaaa", "example.com/Other").unwrap();
    assert_eq!((theirs["status"].as_str(), theirs["reason"].as_str()), (Some("True"), Some("Theirs")));

    // Same device in a new pod (kernel rbd): the old pod becomes safe to delete.
    let shared_uid = cp.rt.block_on(create_attachment_pod(&cp, "hp-volume-bbbbb", &vm.launcher_uid));
    tree.attachment(&shared_uid);
    tree.attach_block(&shared_uid, "disk1", old_dev.dev());
    wait_condition(&agent, &cp, "hp-volume-aaaaa", HANDOFF_SAFE, "True");
    wait_condition(&agent, &cp, "hp-volume-bbbbb", HANDOFF_SAFE, "True");

    // It goes; a pod with a new device (nbd) comes: the remaining old one is unsafe again.
    tree.remove_pod(&shared_uid);
    wait_condition(&agent, &cp, "hp-volume-aaaaa", HANDOFF_SAFE, "False");
    let new_dev = LoopDevice::add();
    let new_uid = cp.rt.block_on(create_attachment_pod(&cp, "hp-volume-ccccc", &vm.launcher_uid));
    tree.attachment(&new_uid);
    tree.attach_block(&new_uid, "disk1", new_dev.dev());
    wait_condition(&agent, &cp, "hp-volume-ccccc", HANDOFF_SAFE, "True");
    let h = condition(&cp, "hp-volume-aaaaa", HANDOFF_SAFE).unwrap();
    assert_eq!(h["status"], "False");
    assert!(h["message"].as_str().unwrap().contains(&format!("disk1 ({})", old_dev.dev())), "{h}");

    // Steady state: no writes.
    std::thread::sleep(Duration::from_secs(1));
    let writes = |a: &Agent| metric(&a.metrics(), "hotplug_watchdog_api_requests_total{verb=\"patch\"}");
    let before = writes(&agent);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(writes(&agent), before, "no writes in a steady state");

    // The old pod's device goes: DevicesPresent False, and only then.
    let t_present = condition(&cp, "hp-volume-aaaaa", DEVICES_PRESENT).unwrap()["lastTransitionTime"].clone();
    old_dev.remove();
    let p = wait_condition(&agent, &cp, "hp-volume-aaaaa", DEVICES_PRESENT, "False");
    assert_eq!(p["reason"], "DeviceMissing");
    assert_ne!(p["lastTransitionTime"], t_present, "a status change moves the transition time");
    let theirs_after = condition(&cp, "hp-volume-aaaaa", "example.com/Other").unwrap();
    assert_eq!(theirs_after, theirs, "someone else's condition is untouched");
    assert!(
        metric(&agent.metrics(), "hotplug_watchdog_status_writes_total{kind=\"pod_conditions\",result=\"ok\"}") >= 4.0
    );
}

#[test]
fn the_admission_policy_holds_the_agent_to_its_node_and_conditions() {
    let cp = ControlPlane::start();
    let _vm = create_vm(&cp, &["disk1"]);
    // A pod on another node.
    cp.rt.block_on(async {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "hp-volume-other", "namespace": NS, "labels": {"kubevirt.io": "hotplug-disk"}},
            "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(cp.admin.clone(), NS).create(&Default::default(), &pod).await.unwrap();
    });
    let agent = cp.agent_client(NODE);
    let pods: Api<Pod> = Api::namespaced(agent, NS);
    let ours =
        json!({"status": {"conditions": [{"type": HANDOFF_SAFE, "status": "True", "reason": "Test", "message": "m"}]}});
    let denied = |r: Result<Pod, kube::Error>, why: &str| match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{why}: refused as Forbidden, counted so by the agent: {s:?}");
            s.message
        }
        Ok(_) => panic!("{why}: allowed"),
        Err(e) => panic!("{why}: {e}"),
    };
    cp.rt.block_on(async {
        let pp = PatchParams::default();
        pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&ours))
            .await
            .expect("own node, own condition: allowed");
        let msg =
            denied(pods.patch_status("hp-volume-other", &pp, &Patch::Strategic(&ours)).await, "another node's pod");
        assert!(msg.contains("own node"), "{msg}");
        let foreign = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let msg = denied(
            pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&foreign)).await,
            "a foreign condition type",
        );
        assert!(msg.contains("own condition types"), "{msg}");
        let phase = json!({"status": {"phase": "Failed"}});
        let msg = denied(pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&phase)).await, "the phase");
        assert!(msg.contains("only change conditions"), "{msg}");
        let spec = json!({"metadata": {"labels": {"x": "y"}}, "spec": {"activeDeadlineSeconds": 5}});
        denied(pods.patch("hp-volume-aaaaa", &pp, &Patch::Strategic(&spec)).await, "a spec change");
        // Everything but conditions, through pods/status too (the server keeps labels and
        // annotations changed there): refused, our own condition in the same patch or not.
        for (what, patch) in [
            ("a label", json!({"metadata": {"labels": {"kubevirt.io": "virt-launcher"}}})),
            ("an annotation", json!({"metadata": {"annotations": {"kubevirt.io/ephemeral-provisioning": "true"}}})),
            ("a finalizer", json!({"metadata": {"finalizers": ["example.com/hold"]}})),
            ("podIPs", json!({"status": {"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}})),
            ("hostIPs", json!({"status": {"hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}]}})),
            ("startTime", json!({"status": {"startTime": "2026-11-30T00:00:00Z"}})),
            ("initContainerStatuses", json!({"status": {"initContainerStatuses": [{"name": "i", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}})),
        ] {
            let mut with_ours = patch.clone();
            json_patch::merge(&mut with_ours, &ours);
            for p in [patch, with_ours] {
                let msg = denied(pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&p)).await, what);
                assert!(msg.contains("only change conditions") || msg.contains("may not change"), "{what}: {msg}");
            }
        }
    });
    let stored =
        cp.rt.block_on(async { Api::<Pod>::namespaced(cp.admin.clone(), NS).get("hp-volume-aaaaa").await.unwrap() });
    assert!(stored.metadata.labels.unwrap_or_default().get("kubevirt.io").map(String::as_str) == Some("hotplug-disk"));
    assert_eq!(stored.metadata.annotations, None, "nothing the agent may not write was stored");
    // A token without the node-name extra gets nothing either.
    let pods: Api<Pod> = Api::namespaced(cp.agent_client_without_node(), NS);
    cp.rt.block_on(async {
        let r = pods.patch_status("hp-volume-aaaaa", &PatchParams::default(), &Patch::Strategic(&ours)).await;
        assert!(matches!(r, Err(kube::Error::Api(ref s)) if s.message.contains("own node")), "{r:?}");
    });
}

#[test]
fn losing_its_role_is_reported_and_survived() {
    if !require_root("losing_its_role_is_reported_and_survived") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, mut disk) = node_with_disk1(&vm);
    let args = ["--rescan-interval", "1h", "--lease-renew-interval", "1s", "--lease-duration", "3s"];
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &args);
    wait_condition(&agent, &cp, "hp-volume-aaaaa", DEVICES_PRESENT, "True");
    agent.wait_ready();
    assert_eq!(series(&agent.metrics(), CONDITIONS_FAILING), 0.0);
    assert!(lease_alive(&cp), "the lease is renewed while the conditions are written");

    // Someone deletes the agent's binding: every call is now 403.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(cp.admin.clone());
    let saved = cp.rt.block_on(bindings.get("hotplug-watchdog")).unwrap();
    cp.rt.block_on(bindings.delete("hotplug-watchdog", &Default::default())).unwrap();
    disk.remove();
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    agent.wait_until("the refused write counted", Duration::from_secs(30), |a| {
        metric(&a.metrics(), "hotplug_watchdog_status_writes_total{kind=\"pod_conditions\",result=\"forbidden\"}")
            >= 1.0
    });
    assert_eq!(agent.get("/healthz").0, 200, "alive and well on the node side");
    assert!(agent.log().contains("cannot write attachment pod conditions"), "said in the log");
    // Not ready, naming the writes, while the pod's condition is stale.
    agent.wait_until("not ready, naming the condition writes", Duration::from_secs(10), |a| {
        let (status, body) = a.get("/readyz");
        status == 503 && body.contains("pod_conditions writes: failing: pod vms/hp-volume-aaaaa (forbidden)")
    });
    let m = agent.metrics();
    assert_eq!(series(&m, CONDITIONS_FAILING), 1.0, "{m}");
    assert_eq!(series(&m, "hotplug_watchdog_ready"), 0.0);
    // The lease is not renewed meanwhile: a consumer sees the agent dead (its lease runs out
    // within 3 s) rather than trusting a condition it can no longer keep true.
    agent.wait_until("the lease runs out", Duration::from_secs(10), |_| !lease_alive(&cp));
    assert_eq!(
        condition(&cp, "hp-volume-aaaaa", DEVICES_PRESENT).unwrap()["status"],
        "True",
        "the stale condition the expired lease no longer vouches for"
    );

    // The binding comes back: the condition converges without a restart.
    let mut restored = saved;
    restored.metadata.resource_version = None;
    restored.metadata.uid = None;
    cp.rt.block_on(bindings.create(&Default::default(), &restored)).unwrap();
    wait_condition(&agent, &cp, "hp-volume-aaaaa", DEVICES_PRESENT, "False");
    agent.wait_until("ready again", Duration::from_secs(60), |a| a.get("/readyz").0 == 200);
    assert_eq!(series(&agent.metrics(), CONDITIONS_FAILING), 0.0);
    agent.wait_until("the lease renewed again", Duration::from_secs(10), |_| lease_alive(&cp));
}

const CONDITIONS_FAILING: &str = "hotplug_watchdog_status_writes_failing{kind=\"pod_conditions\"}";

/// The value of one exact series; a missing series fails the test (it is not a zero).
fn series(metrics: &str, name: &str) -> f64 {
    let value = metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')));
    value.unwrap_or_else(|| panic!("no series {name} in:\n{metrics}")).trim().parse().unwrap()
}

/// Whether node-1's Lease says its agent is alive, by the consumers' rule.
fn lease_alive(cp: &ControlPlane) -> bool {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(cp.admin.clone(), "hotplug-watchdog");
    let lease = cp.rt.block_on(leases.get_opt(&format!("hotplug-watchdog-{NODE}"))).unwrap();
    lease.is_some_and(|l| hotplug_watchdog::cluster::lease::is_alive(&l, k8s_openapi::jiff::Timestamp::now()))
}

/// The pods/status policy names every field of the API server's PodStatus but
/// `conditions`: a field the server gains later cannot slip through (its OpenAPI is read).
#[test]
fn the_status_allow_list_covers_every_pod_status_field_of_the_server() {
    let cp = ControlPlane::start();
    let schema: serde_json::Value = cp.rt.block_on(async {
        let req = http::Request::get("/openapi/v3/api/v1").body(Vec::new()).unwrap();
        cp.admin.request(req).await.unwrap()
    });
    let fields: Vec<String> = schema["components"]["schemas"]["io.k8s.api.core.v1.PodStatus"]["properties"]
        .as_object()
        .expect("PodStatus in the server's OpenAPI")
        .keys()
        .cloned()
        .collect();
    assert!(fields.len() > 15, "{fields:?}");
    let policy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/admission-policy.yaml")).unwrap();
    for f in fields.iter().filter(|f| *f != "conditions") {
        assert!(
            policy.contains(&format!("has(object.status.{f}) ? [object.status.{f}]")),
            "deploy/admission-policy.yaml does not hold status.{f} to its old value"
        );
    }
}

/// Installed under another namespace (a kustomize overlay, as docs/install.md shows), the
/// policies still hold the agent: they match its ServiceAccount by name, in any namespace.
#[test]
fn the_policies_follow_the_agent_into_another_namespace() {
    let cp = ControlPlane::start();
    let _vm = create_vm(&cp, &["disk1"]);
    // kustomize takes bases by relative path only: a copy of deploy/ beside the overlay.
    let dir = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy")])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(overlay.join("kustomization.yaml"), "namespace: watchdog-elsewhere\nresources:\n  - ../deploy\n")
        .unwrap();
    let out = std::process::Command::new(cp.kubectl()).args(["kustomize"]).arg(&overlay).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What RBAC and admission need; the DaemonSet and monitoring objects are not needed here.
    let keep = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_slice(&out.stdout) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if keep.contains(&v["kind"].as_str().unwrap_or("")) {
            docs.push(serde_yaml::to_string(&v).unwrap());
        }
    }
    let rendered = overlay.join("rendered.yaml");
    std::fs::write(&rendered, docs.join("---\n")).unwrap();
    let out = std::process::Command::new(cp.kubectl())
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .args(["apply", "-f"])
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The agent of the overlay: its ServiceAccount in the new namespace, on node-1.
    let text = std::fs::read_to_string(cp.agent_kubeconfig(NODE)).unwrap();
    let moved = text.replace(
        "system:serviceaccount:hotplug-watchdog:hotplug-watchdog",
        "system:serviceaccount:watchdog-elsewhere:hotplug-watchdog",
    );
    assert_ne!(text, moved);
    let path = overlay.join("agent.kubeconfig");
    std::fs::write(&path, moved).unwrap();
    cp.rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
        let pp = PatchParams::default();
        let ours = json!({"status": {"conditions": [{"type": HANDOFF_SAFE, "status": "False", "reason": "T", "message": "m"}]}});
        pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&ours)).await.expect("RBAC of the overlay: allowed");
        let foreign = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let r = pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&foreign)).await;
        assert!(matches!(r, Err(kube::Error::Api(ref s)) if s.message.contains("own condition types")), "{r:?}");
        let label = json!({"metadata": {"labels": {"x": "y"}}});
        let r = pods.patch_status("hp-volume-aaaaa", &pp, &Patch::Strategic(&label)).await;
        assert!(matches!(r, Err(kube::Error::Api(ref s)) if s.message.contains("may not change")), "{r:?}");
    });
}
