//! KubeVirt objects for the cluster tests, created through the API as KubeVirt would:
//! a VMI on a node, its launcher pod (controller ownerReference to the VMI) and attachment
//! pods (controller ownerReference to the launcher pod). Without a kubelet they stay Pending.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::json;

use super::control_plane::ControlPlane;
use super::{KubeletTree, LoopDevice};

pub const NODE: &str = "node-1";
pub const NS: &str = "vms";

/// The objects of one VM with one attachment pod, created as KubeVirt would.
pub struct Vm {
    pub vmi_uid: String,
    pub launcher_uid: String,
    pub attachment_uid: String,
}

pub fn vmi_api(cp: &ControlPlane) -> Api<DynamicObject> {
    Api::namespaced_with(cp.admin.clone(), NS, &hotplug_watchdog::cluster::vmi_resource())
}

pub fn create_vm(cp: &ControlPlane, volumes: &[&str]) -> Vm {
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

pub async fn create_attachment_pod(cp: &ControlPlane, name: &str, launcher_uid: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"kubevirt.io": "hotplug-disk"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-vm1-abcde", "uid": launcher_uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "hotplug-disk", "image": "virt-launcher"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap().metadata.uid.unwrap()
}

pub fn vmi_events(cp: &ControlPlane, reason: &str) -> Vec<Event> {
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

/// The VM's node: a temp kubelet tree where the VM's attachment pod serves `disk1` on a
/// new loop device and the launcher uses it.
pub fn node_with_disk1(vm: &Vm) -> (KubeletTree, LoopDevice) {
    let tree = KubeletTree::new();
    let disk = LoopDevice::add();
    tree.hotplugged(&vm.launcher_uid, &vm.attachment_uid, "disk1", disk.dev());
    (tree, disk)
}
