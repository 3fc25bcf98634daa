//! Cluster mode against a real kube-apiserver + etcd, with real loop devices in a temp
//! kubelet tree named by the UIDs of pods created through the API (they stay Pending:
//! there is no kubelet). The agent runs with exactly the permissions of `deploy/`
//! (impersonating its ServiceAccount).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::control_plane::ControlPlane;
use support::*;

const NODE: &str = "node-1";
const NS: &str = "vms";

/// The objects of one VM with one attachment pod, created as KubeVirt would.
struct Vm {
    vmi_uid: String,
    launcher_uid: String,
    attachment_uid: String,
}

fn vmi_api(cp: &ControlPlane) -> Api<DynamicObject> {
    Api::namespaced_with(cp.admin.clone(), NS, &hotplug_watchdog::cluster::vmi_resource())
}

fn create_vm(cp: &ControlPlane, volumes: &[&str]) -> Vm {
    cp.rt.block_on(async {
        let pp = PostParams::default();
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        let _ = nss.create(&pp, &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap()).await;
        let spec_volumes: Vec<_> = volumes.iter().map(|v| json!({"name": v, "persistentVolumeClaim": {"claimName": format!("pvc-{v}")}})).collect();
        let vmi: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": NS, "labels": {"kubevirt.io/nodeName": NODE}},
            "spec": {"domain": {"devices": {}}, "volumes": spec_volumes}
        }))
        .unwrap();
        let vmi = vmi_api(cp).create(&pp, &vmi).await.unwrap();
        let vmi_uid = vmi.metadata.uid.unwrap();
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
        let launcher: Pod = serde_json::from_value(json!({
            "metadata": {"name": "virt-launcher-vm1-abcde", "namespace": NS,
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi_uid},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1", "uid": vmi_uid, "controller": true}]},
            "spec": {"nodeName": NODE, "containers": [{"name": "compute", "image": "virt-launcher"}]}
        }))
        .unwrap();
        let launcher = pods.create(&pp, &launcher).await.unwrap();
        let launcher_uid = launcher.metadata.uid.unwrap();
        let attachment_uid = create_attachment_pod(cp, "hp-volume-aaaaa", &launcher_uid).await;
        Vm { vmi_uid, launcher_uid, attachment_uid }
    })
}

async fn create_attachment_pod(cp: &ControlPlane, name: &str, launcher_uid: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"kubevirt.io": "hotplug-disk"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-vm1-abcde", "uid": launcher_uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "hotplug-disk", "image": "virt-launcher"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap().metadata.uid.unwrap()
}

fn vmi_events(cp: &ControlPlane, reason: &str) -> Vec<Event> {
    cp.rt.block_on(async {
        let events: Api<Event> = Api::namespaced(cp.admin.clone(), NS);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("vm1")
            })
            .collect()
    })
}

fn entry(agent: &Agent, launcher: &str, volume: &str) -> serde_json::Value {
    volume_entry(&agent.report(), launcher, volume).cloned().unwrap_or(serde_json::Value::Null)
}

#[test]
fn names_events_and_unplugs_on_a_real_control_plane() {
    if !require_root("names_events_and_unplugs_on_a_real_control_plane") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["rootdisk", "disk1", "disk2"]);
    let tree = KubeletTree::new();
    let mut disk1 = LoopDevice::add();
    let mut disk2 = LoopDevice::add();
    tree.launcher(&vm.launcher_uid);
    tree.attachment(&vm.attachment_uid);
    for (name, dev) in [("disk1", disk1.dev()), ("disk2", disk2.dev())] {
        tree.attach_block(&vm.attachment_uid, name, dev);
        tree.launcher_block(&vm.launcher_uid, name, dev);
    }
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    agent.wait_until("names from the API", Duration::from_secs(20), |a| {
        entry(a, &vm.launcher_uid, "disk1")["vmi"] == "vm1"
    });
    let v = entry(&agent, &vm.launcher_uid, "disk1");
    assert_eq!(v["state"], "ready");
    assert_eq!(v["namespace"], NS);
    assert_eq!(v["pod"], "virt-launcher-vm1-abcde");
    assert_eq!(v["in_spec"], true);
    let report = agent.report();
    let att = report["attachment_pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_uid"] == vm.attachment_uid.as_str())
        .unwrap()
        .clone();
    assert_eq!(att["pod"], "hp-volume-aaaaa");
    assert_eq!(att["vmi"], "vm1");
    assert_eq!(att["launcher_pod_uid"], vm.launcher_uid.as_str());
    let labels = |vol: &str| {
        format!(
            "pod_uid=\"{}\",volume=\"{vol}\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"virt-launcher-vm1-abcde\"",
            vm.launcher_uid
        )
    };
    assert_eq!(
        metric(&agent.metrics(), &format!("hotplug_watchdog_volume_device_present{{{}}}", labels("disk1"))),
        1.0
    );

    // disk1's device vanishes under the running VM: a Warning Event on the VMI, once.
    disk1.remove();
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    agent.wait_until("a HotplugDeviceVanished Event", Duration::from_secs(20), |_| {
        !vmi_events(&cp, "HotplugDeviceVanished").is_empty()
    });
    let events = vmi_events(&cp, "HotplugDeviceVanished");
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = &events[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("hotplug-watchdog"));
    assert_eq!(ev.regarding.as_ref().unwrap().uid.as_deref(), Some(vm.vmi_uid.as_str()));
    assert!(ev.note.as_deref().unwrap().contains("disk1"), "{ev:?}");
    assert_eq!(
        metric(&agent.metrics(), &format!("hotplug_watchdog_device_vanished_total{{{}}}", labels("disk1"))),
        1.0
    );

    // disk2 leaves the spec first (an unplug), then its device goes: no alarm.
    cp.rt.block_on(async {
        let patch = json!({"spec": {"volumes": [{"name": "rootdisk"}, {"name": "disk1"}]}});
        vmi_api(&cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    agent.wait_until("disk2 out of the spec", Duration::from_secs(20), |a| {
        entry(a, &vm.launcher_uid, "disk2")["in_spec"] == false
    });
    disk2.remove();
    agent.wait_volume(&vm.launcher_uid, "disk2", Some("vanished"));
    std::thread::sleep(Duration::from_millis(500));
    let events = vmi_events(&cp, "HotplugDeviceVanished");
    assert!(
        events.iter().all(|e| !e.note.as_deref().unwrap_or("").contains("disk2")),
        "no alarm for an unplug: {events:#?}"
    );
    assert_eq!(
        metric(&agent.metrics(), &format!("hotplug_watchdog_device_vanished_total{{{}}}", labels("disk2"))),
        0.0
    );
    assert!(
        metric(&agent.metrics(), "hotplug_watchdog_events_total{reason=\"HotplugDeviceVanished\",result=\"sent\"}")
            >= 1.0
    );
}

#[test]
fn the_agent_role_allows_reading_and_events_only() {
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let agent = cp.agent_client(NODE);
    cp.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(agent.clone(), NS);
        assert!(pods.list(&ListParams::default()).await.is_ok(), "list pods");
        let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
        assert!(forbidden(pods.get("virt-launcher-vm1-abcde").await.map(|_| ())), "get is not needed, not granted");
        assert!(
            forbidden(pods.delete("virt-launcher-vm1-abcde", &DeleteParams::default()).await.map(|_| ())),
            "delete pods"
        );
        let patch = json!({"metadata": {"labels": {"x": "y"}}});
        assert!(
            forbidden(
                pods.patch("virt-launcher-vm1-abcde", &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            ),
            "patch pods"
        );
        let vmis: Api<DynamicObject> =
            Api::namespaced_with(agent.clone(), NS, &hotplug_watchdog::cluster::vmi_resource());
        assert!(vmis.list(&ListParams::default()).await.is_ok(), "list VMIs");
        let status = json!({"status": {"phase": "Failed"}});
        assert!(
            forbidden(vmis.patch("vm1", &PatchParams::default(), &Patch::Merge(&status)).await.map(|_| ())),
            "patch VMIs"
        );
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(agent.clone(), NS);
        assert!(forbidden(secrets.list(&ListParams::default()).await.map(|_| ())), "secrets");
    });
    let _ = vm;
}
