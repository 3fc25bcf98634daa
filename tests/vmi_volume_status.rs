//! The VMI's status.volumeStatus reason/message, against a real kube-apiserver with real
//! loop devices: set when the device vanishes and taken back when it returns, with every
//! other byte unchanged, while writers that behave like virt-handler (full Update with
//! resourceVersion) and virt-controller (JSON patch of the whole list, guarded by `test`)
//! keep writing; and a write that KubeVirt's webhook would put back, emulated with a
//! MutatingAdmissionPolicy, is detected and not fought.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::kubevirt::*;
use support::*;

/// The volumeStatus KubeVirt would have written: rootdisk (virt-handler's size counter
/// lives there in this test), the hotplugged disk1, and disk9 (the controller's counter).
fn set_initial_status(cp: &ControlPlane, attach_pod_uid: &str) -> Value {
    let disk1 = json!({"name": "disk1", "target": "sda", "phase": "Ready", "reason": "VolumeReady",
        "message": "Successfully attach hotplugged volume disk1 to VM",
        "hotplugVolume": {"attachPodName": "hp-volume-aaaaa", "attachPodUID": attach_pod_uid},
        "persistentVolumeClaimInfo": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}});
    cp.rt.block_on(async {
        let patch = json!({"status": {"phase": "Running", "volumeStatus": [
            {"name": "rootdisk", "target": "vda", "phase": "Ready", "size": 0},
            disk1,
            {"name": "disk9", "target": "sdb", "phase": "Ready", "size": 0, "hotplugVolume": {"attachPodName": "hp-volume-aaaaa"}},
        ]}});
        vmi_api(cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    disk1
}

fn vmi(cp: &ControlPlane) -> Value {
    cp.rt.block_on(async { serde_json::to_value(vmi_api(cp).get("vm1").await.unwrap()).unwrap() })
}

fn entry(v: &Value, i: usize) -> Value {
    v["status"]["volumeStatus"][i].clone()
}

fn without_words(mut e: Value) -> Value {
    let m = e.as_object_mut().unwrap();
    m.remove("reason");
    m.remove("message");
    e
}

/// virt-handler: read, change, full Update with the resourceVersion; a conflict means
/// read again. Returns the last value it stored.
async fn handler_like(api: Api<DynamicObject>, stop: Arc<AtomicBool>, stored: Arc<AtomicI64>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut obj = api.get("vm1").await.unwrap();
        n += 1;
        obj.data["status"]["volumeStatus"][0]["size"] = json!(n);
        match api.replace("vm1", &PostParams::default(), &obj).await {
            Ok(_) => stored.store(n, Ordering::Relaxed),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("handler-like writer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// virt-controller: JSON patch replacing the whole list, guarded by a `test` of it.
async fn controller_like(api: Api<DynamicObject>, stop: Arc<AtomicBool>, stored: Arc<AtomicI64>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let obj = api.get("vm1").await.unwrap();
        let old = obj.data["status"]["volumeStatus"].clone();
        let mut new = old.clone();
        n += 1;
        new[2]["size"] = json!(n);
        let ops = json!([
            {"op": "test", "path": "/status/volumeStatus", "value": old},
            {"op": "replace", "path": "/status/volumeStatus", "value": new},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        match api.patch("vm1", &PatchParams::default(), &Patch::Json::<()>(patch)).await {
            Ok(_) => stored.store(n, Ordering::Relaxed),
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {}
            Err(e) => panic!("controller-like writer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// vm1 with rootdisk, disk1 (hotplugged, on a loop device) and disk9, its volumeStatus as
/// KubeVirt writes it, and the agent in cluster mode with `--vmi-volume-status mode`,
/// synced. Returns disk1's entry as it was before the agent ran.
fn vm_watched_by_agent(cp: &ControlPlane, mode: &str) -> (Vm, Value, KubeletTree, LoopDevice, Agent) {
    let vm = create_vm(cp, &["rootdisk", "disk1", "disk9"]);
    let disk1_before = set_initial_status(cp, &vm.attachment_uid);
    let (tree, disk) = node_with_disk1(&vm);
    let agent = Agent::start_cluster(
        &tree.root,
        &cp.agent_kubeconfig(NODE),
        NODE,
        &["--rescan-interval", "1h", "--vmi-volume-status", mode],
    );
    agent.wait_ready();
    agent.wait_until("synced", Duration::from_secs(30), |a| {
        volume_entry(&a.report(), &vm.launcher_uid, "disk1").is_some_and(|v| v["vmi"] == "vm1")
    });
    (vm, disk1_before, tree, disk, agent)
}

#[test]
fn reason_and_message_set_and_taken_back_while_kubevirt_writes_too() {
    if !require_root("reason_and_message_set_and_taken_back_while_kubevirt_writes_too") {
        return;
    }
    let cp = ControlPlane::start();
    cp.rt.block_on(cp.apply("deploy/optional/vmi-volume-status-rbac.yaml"));
    let (vm, disk1_before, tree, disk, agent) = vm_watched_by_agent(&cp, "on");

    let stop = Arc::new(AtomicBool::new(false));
    let (handler_n, controller_n) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let writers = [
        cp.rt.spawn(handler_like(vmi_api(&cp), stop.clone(), handler_n.clone())),
        cp.rt.spawn(controller_like(vmi_api(&cp), stop.clone(), controller_n.clone())),
    ];

    // The attachment pod's directory goes (as when the controller deletes it): the VM's
    // device is unbacked.
    tree.remove_pod(&vm.attachment_uid);
    agent.wait_until("our reason in volumeStatus", Duration::from_secs(30), |_| {
        entry(&vmi(&cp), 1)["reason"] == "HotplugDeviceUnbacked"
    });
    let set = entry(&vmi(&cp), 1);
    assert!(set["message"].as_str().unwrap().contains(&disk.dev().to_string()), "{set}");
    assert_eq!(without_words(set), without_words(disk1_before.clone()), "phase and every other field unchanged");

    tree.attachment(&vm.attachment_uid);
    tree.attach_block(&vm.attachment_uid, "disk1", disk.dev());
    agent.wait_until("our words taken back", Duration::from_secs(30), |_| entry(&vmi(&cp), 1).get("reason").is_none());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        cp.rt.block_on(w).unwrap();
    }
    let last = vmi(&cp);
    assert_eq!(without_words(entry(&last, 1)), without_words(disk1_before), "disk1 unchanged but for our words");
    assert_eq!(entry(&last, 0)["size"], json!(handler_n.load(Ordering::Relaxed)), "virt-handler lost no write");
    assert_eq!(entry(&last, 2)["size"], json!(controller_n.load(Ordering::Relaxed)), "virt-controller lost no write");
    assert!(handler_n.load(Ordering::Relaxed) > 5 && controller_n.load(Ordering::Relaxed) > 5, "both really wrote");
    assert_eq!(last["status"]["phase"], "Running");
    let m = agent.metrics();
    assert!(metric(&m, "hotplug_watchdog_status_writes_total{kind=\"vmi_volume_status\",result=\"ok\"}") >= 2.0, "{m}");
    assert_eq!(metric(&m, "hotplug_watchdog_status_writes_total{kind=\"vmi_volume_status\",result=\"reverted\"}"), 0.0);
}

/// KubeVirt's VMI webhook puts back status changes by service accounts not its own; a
/// MutatingAdmissionPolicy does the same here for the agent's user.
fn install_revert_policy(cp: &ControlPlane) {
    cp.rt.block_on(async {
        let discovery = kube::discovery::Discovery::new(cp.admin.clone()).run().await.unwrap();
        let group = discovery.get("admissionregistration.k8s.io").expect("admissionregistration group");
        let (ar, _) = group
            .resources_by_stability()
            .into_iter()
            .find(|(ar, _)| ar.kind == "MutatingAdmissionPolicy")
            .expect("this kube-apiserver serves MutatingAdmissionPolicy");
        let binding_ar = group
            .resources_by_stability()
            .into_iter()
            .map(|(ar, _)| ar)
            .find(|b| b.kind == "MutatingAdmissionPolicyBinding" && b.version == ar.version)
            .unwrap();
        let api_version = ar.api_version.clone();
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": api_version, "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": "emulate-kubevirt-status-revert"},
            "spec": {
                "matchConstraints": {"resourceRules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": ["virtualmachineinstances"]}]},
                "matchConditions": [{"name": "agent", "expression": format!("request.userInfo.username == '{}'", support::control_plane::AGENT_USER)}],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": "[JSONPatch{op: 'replace', path: '/status', value: oldObject.status}]"}}]
            }
        }))
        .unwrap();
        Api::<DynamicObject>::all_with(cp.admin.clone(), &ar).create(&PostParams::default(), &policy).await.unwrap();
        let binding: DynamicObject = serde_json::from_value(json!({
            "apiVersion": api_version, "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": "emulate-kubevirt-status-revert"},
            "spec": {"policyName": "emulate-kubevirt-status-revert"}
        }))
        .unwrap();
        Api::<DynamicObject>::all_with(cp.admin.clone(), &binding_ar).create(&PostParams::default(), &binding).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
}

#[test]
fn a_write_put_back_is_detected_and_not_fought() {
    if !require_root("a_write_put_back_is_detected_and_not_fought") {
        return;
    }
    let cp = ControlPlane::start();
    cp.rt.block_on(cp.apply("deploy/optional/vmi-volume-status-rbac.yaml"));
    install_revert_policy(&cp);
    let (vm, disk1_before, _tree, mut disk, agent) = vm_watched_by_agent(&cp, "auto");

    disk.remove();
    let reverted = "hotplug_watchdog_status_writes_total{kind=\"vmi_volume_status\",result=\"reverted\"}";
    agent.wait_until("the revert detected", Duration::from_secs(30), |a| metric(&a.metrics(), reverted) == 1.0);
    agent.wait_until("a Warning Event about it", Duration::from_secs(20), |_| {
        !vmi_events(&cp, "HotplugStatusWriteRejected").is_empty()
    });
    assert!(agent.log().contains("VMI volumeStatus writes stop"), "said in the log");
    assert_eq!(entry(&vmi(&cp), 1), disk1_before, "the status was put back, untouched");

    // More changes: auto mode does not write again.
    let reused = LoopDevice::re_add(disk.index);
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("replaced"));
    drop(reused);
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.metrics();
    let attempts: f64 = hotplug_watchdog::cluster::outcome::WriteResult::ALL
        .map(|r| r.label())
        .iter()
        .map(|r| {
            metric(&m, &format!("hotplug_watchdog_status_writes_total{{kind=\"vmi_volume_status\",result=\"{r}\"}}"))
        })
        .sum();
    assert_eq!(attempts, 1.0, "one write, then no fight: {m}");
    assert_eq!(vmi_events(&cp, "HotplugStatusWriteRejected").len(), 1);
    // The pod conditions, which nothing reverts, still carry the truth.
    assert!(metric(&m, "hotplug_watchdog_status_writes_total{kind=\"pod_conditions\",result=\"ok\"}") >= 1.0);
}

/// The optional policy holds the agent to VMIs of its node before and after the write, and
/// to the words of existing entries: relabelling another node's VMI to its own in the same
/// patch, or touching metadata and finalizers, is refused (by impersonation).
#[test]
fn the_vmi_policy_checks_the_node_before_and_after_and_refuses_metadata() {
    let cp = ControlPlane::start();
    cp.rt.block_on(cp.apply("deploy/optional/vmi-volume-status-rbac.yaml"));
    let vm = create_vm(&cp, &["rootdisk", "disk1"]);
    set_initial_status(&cp, &vm.attachment_uid);
    // Another VMI, on node-2.
    cp.rt.block_on(async {
        let other: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm2", "namespace": NS, "labels": {"kubevirt.io/nodeName": "node-2"}},
            "spec": {"domain": {"devices": {}}, "volumes": []}
        }))
        .unwrap();
        vmi_api(&cp).create(&PostParams::default(), &other).await.unwrap();
    });
    let agent: Api<DynamicObject> =
        Api::namespaced_with(cp.agent_client(NODE), NS, &hotplug_watchdog::cluster::vmi_resource());
    let refused = |r: Result<DynamicObject, kube::Error>, what: &str, says: &str| match r {
        Err(kube::Error::Api(s)) => assert!(s.message.contains(says), "{what}: {}", s.message),
        other => panic!("{what}: not refused: {other:?}"),
    };
    let mut statuses = vmi(&cp)["status"]["volumeStatus"].clone();
    cp.rt.block_on(async {
        // A policy takes a moment to be in force after its creation: wait (with dry runs)
        // until a finalizer is refused.
        let dry = PatchParams { dry_run: true, ..Default::default() };
        let probe = json!({"metadata": {"finalizers": ["example.com/probe"]}});
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while agent.patch("vm1", &dry, &Patch::Merge(&probe)).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the VMI policy never came into force");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pp = PatchParams::default();
        // Its own node's VMI, only words of an existing entry: allowed.
        statuses[1]["reason"] = json!("HotplugDeviceVanished");
        let words = json!({"status": {"volumeStatus": statuses}});
        agent.patch("vm1", &pp, &Patch::Merge(&words)).await.expect("own node, words only: allowed");
        // vm2 relabelled to node-1 in the same patch.
        let steal = json!({"metadata": {"labels": {"kubevirt.io/nodeName": NODE}}, "status": {"phase": "Running"}});
        refused(agent.patch("vm2", &pp, &Patch::Merge(&steal)).await, "relabel to its own node", "own node");
        // Metadata of its own node's VMI.
        for (what, patch) in [
            ("a finalizer", json!({"metadata": {"finalizers": ["example.com/hold"]}})),
            ("a label", json!({"metadata": {"labels": {"x": "y"}}})),
            ("an annotation", json!({"metadata": {"annotations": {"x": "y"}}})),
        ] {
            refused(agent.patch("vm1", &pp, &Patch::Merge(&patch)).await, what, "may not change a VMI's labels");
        }
    });
    let stored = vmi(&cp);
    assert_eq!(stored["metadata"]["finalizers"], Value::Null);
}
