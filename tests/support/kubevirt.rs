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

// ------------------------------------------------------- VMs shaped as KubeVirt v1.9.0 makes them

/// One VM with hotplugged volumes, shaped as KubeVirt v1.9.0 makes it, for the tests that
/// play its controller (support/controller.rs): a VMI whose `rootdisk` PVC is in the
/// launcher pod and whose other volumes are hotpluggable PVCs, its launcher pod (Running),
/// and attachment pods made by `create_hp_pod`.
pub struct HotplugVm {
    pub ns: String,
    pub name: String,
    pub node: String,
    pub vmi_uid: String,
    pub launcher: String,
    pub launcher_uid: String,
}

pub fn vmi_api_in(cp: &ControlPlane, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(cp.admin.clone(), ns, &hotplug_watchdog::cluster::vmi_resource())
}

/// The VMI (phase Running on `node`) and its launcher pod (Running), in namespace `ns`.
pub fn create_hotplug_vm(cp: &ControlPlane, ns: &str, name: &str, node: &str, hotplug: &[&str]) -> HotplugVm {
    cp.rt.block_on(async {
        let pp = PostParams::default();
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        let _ = nss.create(&pp, &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap()).await;
        let mut volumes = vec![json!({"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}})];
        volumes.extend(hotplug.iter().map(
            |v| json!({"name": v, "persistentVolumeClaim": {"claimName": format!("pvc-{v}"), "hotpluggable": true}}),
        ));
        let vmi: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubevirt.io/nodeName": node}},
            "spec": {"domain": {"devices": {}}, "volumes": volumes},
            "status": {"phase": "Running", "nodeName": node}
        }))
        .unwrap();
        let vmi_uid = vmi_api_in(cp, ns).create(&pp, &vmi).await.unwrap().metadata.uid.unwrap();
        let mut vm = HotplugVm {
            ns: ns.into(),
            name: name.into(),
            node: node.into(),
            vmi_uid,
            launcher: format!("virt-launcher-{name}-abcde"),
            launcher_uid: String::new(),
        };
        vm.launcher_uid = create_launcher(cp, &vm, &vm.launcher, node).await;
        set_pod_phase_async(cp, ns, &vm.launcher, "Running").await;
        vm
    })
}

/// A launcher pod of `vm` on `node` (a migration target is another one), not yet running.
pub async fn create_launcher(cp: &ControlPlane, vm: &HotplugVm, name: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": vm.ns,
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vm.vmi_uid},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": vm.name,
                "uid": vm.vmi_uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "compute", "image": "virt-launcher"}],
            "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}}]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), &vm.ns);
    pods.create(&PostParams::default(), &pod).await.unwrap().metadata.uid.unwrap()
}

/// An attachment pod of `owner` (a launcher pod of `vm`), as v1.9.0's
/// `RenderHotplugAttachmentPodTemplate` renders it: `hp-volume-` name, label
/// `kubevirt.io=hotplug-disk`, a controller ownerReference to the launcher pod, the
/// `hotplug-disks` emptyDir, one PVC volume per VMI volume (claim `pvc-<volume>`), grace
/// period 0; plus the service-account token volume the ServiceAccount admission plugin adds
/// (this control plane runs without it), which v1.9.0's "-2" in
/// `podVolumesMatchesReadyVolumes` counts on. Not yet running.
pub async fn create_hp_pod(
    cp: &ControlPlane,
    vm: &HotplugVm,
    owner: (&str, &str),
    name: &str,
    node: &str,
    volumes: &[&str],
    annotations: serde_json::Value,
) -> String {
    let mut pod_volumes = vec![json!({"name": "hotplug-disks", "emptyDir": {}})];
    pod_volumes
        .extend(volumes.iter().map(|v| json!({"name": v, "persistentVolumeClaim": {"claimName": format!("pvc-{v}")}})));
    pod_volumes.push(json!({"name": "kube-api-access-x7k2p",
        "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": vm.ns, "labels": {"kubevirt.io": "hotplug-disk"}, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": owner.0, "uid": owner.1,
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "serviceAccountName": "default",
            "containers": [{"name": "hotplug-disk", "image": "virt-launcher",
                "volumeMounts": [{"name": "hotplug-disks", "mountPath": "/path"}]}],
            "volumes": pod_volumes}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), &vm.ns);
    pods.create(&PostParams::default(), &pod).await.unwrap().metadata.uid.unwrap()
}

/// What a kubelet writes for a started pod: phase `Running`, its conditions `True` with
/// their transition time, and a running, ready status per container. KubeVirt's controller
/// reads the container statuses: it takes an attachment pod as attached only when its one
/// container status is ready (`processHotplugVolumeStatus`), as the conformance lane showed
/// (docs/conformance.md).
pub fn kubelet_running_status(pod: &Pod) -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": true,
                "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let conditions: Vec<_> = ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
    json!({"phase": "Running", "startTime": now, "conditions": conditions, "containerStatuses": containers})
}

/// Sets a pod's phase as the kubelet would; `Running` as `kubelet_running_status` says.
pub async fn set_pod_phase_async(cp: &ControlPlane, ns: &str, pod: &str, phase: &str) {
    let pods = Api::<Pod>::namespaced(cp.admin.clone(), ns);
    let status = if phase == "Running" {
        kubelet_running_status(&pods.get(pod).await.unwrap())
    } else {
        json!({"phase": phase})
    };
    pods.patch_status(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&json!({"status": status})),
    )
    .await
    .unwrap();
}

pub fn set_pod_phase(cp: &ControlPlane, ns: &str, pod: &str, phase: &str) {
    cp.rt.block_on(set_pod_phase_async(cp, ns, pod, phase));
}

/// A JSON merge patch of the VMI (spec, labels or status: the CRD has no status subresource).
pub fn patch_vmi(cp: &ControlPlane, vm: &HotplugVm, patch: serde_json::Value) {
    cp.rt.block_on(async {
        vmi_api_in(cp, &vm.ns)
            .patch(&vm.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
            .unwrap();
    });
}

/// The VMI's `status.volumeStatus`, as virt-controller and virt-handler write it: one entry
/// per `(volume, phase, attachment pod name, attachment pod uid)`. A shortcut: v1.9.0's
/// controller itself moves a `Ready` volume's attachment pod to the new pod (phase kept) and
/// puts a new volume in `AttachedToNode`; only `MountedToPod` and `Ready` are
/// virt-handler's. The cleanup rule reads the current pod's phase, not these entries, so the
/// outcomes are the same (docs/conformance.md; tests/conformance.rs plays the real order).
pub fn set_volume_status(cp: &ControlPlane, vm: &HotplugVm, entries: &[(&str, &str, &str, &str)]) {
    let list: Vec<_> = entries
        .iter()
        .map(|(v, phase, pod, uid)| {
            json!({"name": v, "phase": phase, "target": if *phase == "Ready" { "sdb" } else { "" },
                "hotplugVolume": {"attachPodName": pod, "attachPodUID": uid},
                "persistentVolumeClaimInfo": {"claimName": format!("pvc-{v}"), "volumeMode": "Block"}})
        })
        .collect();
    patch_vmi(cp, vm, json!({"status": {"volumeStatus": list}}));
}

/// What hotplugging disk2 left on the node: the new attachment pod, its own device for
/// disk1 (none when the old pod's is shared), disk2's device, and when they appeared.
pub struct Disk2Hotplug {
    pub pod_uid: String,
    pub disk1_new: Option<LoopDevice>,
    pub disk2: LoopDevice,
    pub appeared: std::time::Instant,
}

/// The user hotplugs disk2 into `vm`, whose disk1 is on `old_disk1`: the VMI's spec gains
/// disk2; the new attachment pod `new_pod` holds disk1 and disk2 and its devices appear
/// (disk1 on a new device, or on `old_disk1` when `shared`); it runs, virt-handler makes
/// disk2's node in the launcher, and both volumes are Ready.
pub fn hotplug_disk2(
    cp: &ControlPlane,
    tree: &KubeletTree,
    vm: &HotplugVm,
    new_pod: &str,
    old_disk1: hotplug_watchdog::device::DevNum,
    shared: bool,
) -> Disk2Hotplug {
    patch_vmi(
        cp,
        vm,
        json!({"spec": {"volumes": [
            {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
            {"name": "disk1", "persistentVolumeClaim": {"claimName": "pvc-disk1", "hotpluggable": true}},
            {"name": "disk2", "persistentVolumeClaim": {"claimName": "pvc-disk2", "hotpluggable": true}}]}}),
    );
    let launcher = (vm.launcher.as_str(), vm.launcher_uid.as_str());
    let pod_uid = cp.rt.block_on(create_hp_pod(cp, vm, launcher, new_pod, &vm.node, &["disk1", "disk2"], json!({})));
    let disk1_new = (!shared).then(LoopDevice::add);
    let disk2 = LoopDevice::add();
    tree.attachment(&pod_uid);
    tree.attach_block(&pod_uid, "disk1", disk1_new.as_ref().map_or(old_disk1, |d| d.dev()));
    tree.attach_block(&pod_uid, "disk2", disk2.dev());
    let appeared = std::time::Instant::now();
    set_pod_phase(cp, &vm.ns, new_pod, "Running");
    tree.launcher_block(&vm.launcher_uid, "disk2", disk2.dev());
    set_volume_status(cp, vm, &[("disk1", "Ready", new_pod, &pod_uid), ("disk2", "Ready", new_pod, &pod_uid)]);
    Disk2Hotplug { pod_uid, disk1_new, disk2, appeared }
}

/// A pod's `hotplug-watchdog.io/HandoffSafe` condition: `(status, reason)`.
pub fn handoff_condition(cp: &ControlPlane, ns: &str, pod: &str) -> Option<(String, String)> {
    cp.rt.block_on(async {
        let p = Api::<Pod>::namespaced(cp.admin.clone(), ns).get_opt(pod).await.unwrap()?;
        let c = p.status?.conditions?.into_iter().find(|c| c.type_ == "hotplug-watchdog.io/HandoffSafe")?;
        Some((c.status, c.reason.unwrap_or_default()))
    })
}

pub fn pod_exists(cp: &ControlPlane, ns: &str, pod: &str) -> bool {
    cp.rt.block_on(Api::<Pod>::namespaced(cp.admin.clone(), ns).get_opt(pod)).unwrap().is_some()
}
