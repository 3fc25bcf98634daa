//! What the API server says about this node's hotplug objects, reduced to what the node
//! engine needs: which launcher pod an attachment pod serves, which VMI a launcher runs
//! and its spec volumes, and the names to put on metrics, reports and Events. Pure: built
//! from the objects the watches hold, no I/O.
//!
//! KubeVirt's own conventions (see docs/kubevirt-hotplug facts, section 4):
//! - launcher pods: label `kubevirt.io=virt-launcher`, label `kubevirt.io/created-by=<vmi uid>`
//!   and a controller ownerReference to the VMI;
//! - attachment pods: label `kubevirt.io=hotplug-disk`, a controller ownerReference to the
//!   launcher pod (not the VMI).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;

use crate::inventory::ClusterFacts;
use crate::layout::PodUid;
use crate::report::PodNames;

pub const LABEL_KUBEVIRT: &str = "kubevirt.io";
pub const LAUNCHER_ROLE: &str = "virt-launcher";
pub const ATTACHMENT_ROLE: &str = "hotplug-disk";
pub const LABEL_CREATED_BY: &str = "kubevirt.io/created-by";
pub const LABEL_NODE_NAME: &str = "kubevirt.io/nodeName";

/// A VMI, enough to name it and to point an Event at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Names for every launcher and attachment pod on the node, by UID.
    pub names: BTreeMap<PodUid, PodNames>,
    /// Attachment pod -> the launcher pod it serves (its controller ownerReference).
    pub owners: BTreeMap<PodUid, PodUid>,
    /// Every attachment pod the API server places on this node, UID -> name.
    pub attachment_pods: BTreeMap<PodUid, String>,
    /// Attachment pod -> creation time (Unix seconds): which one is newer.
    pub created: BTreeMap<PodUid, i64>,
    /// Launcher pod -> its VMI.
    pub vmis: BTreeMap<PodUid, VmiRef>,
    /// Launcher pod -> the volume names in its VMI's spec. Absent when the VMI is not known:
    /// then nothing can be said about a volume having left the spec.
    pub spec_volumes: BTreeMap<PodUid, BTreeSet<String>>,
}

fn role(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(LABEL_KUBEVIRT).map(String::as_str)
}

fn controller_owner<'a>(pod: &'a Pod, kind: &str) -> Option<&'a str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.as_str())
}

impl ClusterView {
    /// The part of the view the node engine judges with.
    pub fn facts(&self) -> ClusterFacts {
        ClusterFacts {
            owners: self.owners.clone(),
            spec_volumes: self.spec_volumes.clone(),
            created: self.created.clone(),
        }
    }

    pub fn build<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        vmis: impl IntoIterator<Item = &'a DynamicObject>,
    ) -> Self {
        let vmis_by_uid: BTreeMap<&str, &DynamicObject> =
            vmis.into_iter().filter_map(|v| Some((v.metadata.uid.as_deref()?, v))).collect();
        let mut view = ClusterView::default();
        let pods: Vec<&Pod> = pods.into_iter().collect();

        for pod in pods.iter().filter(|p| role(p) == Some(LAUNCHER_ROLE)) {
            let (Some(uid), Some(ns)) = (&pod.metadata.uid, &pod.metadata.namespace) else {
                continue;
            };
            let vmi_uid = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_CREATED_BY))
                .map(String::as_str)
                .or_else(|| controller_owner(pod, "VirtualMachineInstance"));
            let vmi = vmi_uid.and_then(|u| vmis_by_uid.get(u));
            let vmi_name = vmi.and_then(|v| v.metadata.name.clone()).or_else(|| {
                // The VMI may not be watched yet (or is on its way out): its name is in
                // the launcher's ownerReference too.
                pod.metadata
                    .owner_references
                    .as_ref()?
                    .iter()
                    .find(|o| o.kind == "VirtualMachineInstance")
                    .map(|o| o.name.clone())
            });
            if let (Some(v), Some(vmi_uid)) = (vmi, vmi_uid) {
                view.vmis.insert(
                    uid.clone(),
                    VmiRef {
                        namespace: ns.clone(),
                        name: v.metadata.name.clone().unwrap_or_default(),
                        uid: vmi_uid.to_string(),
                    },
                );
                view.spec_volumes.insert(uid.clone(), spec_volume_names(v));
            }
            view.names.insert(
                uid.clone(),
                PodNames { namespace: Some(ns.clone()), vmi: vmi_name, pod: pod.metadata.name.clone() },
            );
        }

        for pod in pods.iter().filter(|p| role(p) == Some(ATTACHMENT_ROLE)) {
            let Some(uid) = &pod.metadata.uid else { continue };
            view.attachment_pods.insert(uid.clone(), pod.metadata.name.clone().unwrap_or_default());
            if let Some(t) = &pod.metadata.creation_timestamp {
                view.created.insert(uid.clone(), t.0.as_second());
            }
            let launcher = controller_owner(pod, "Pod").map(str::to_string);
            let vmi = launcher.as_ref().and_then(|l| view.names.get(l)).and_then(|n| n.vmi.clone());
            view.names.insert(
                uid.clone(),
                PodNames { namespace: pod.metadata.namespace.clone(), vmi, pod: pod.metadata.name.clone() },
            );
            if let Some(l) = launcher {
                view.owners.insert(uid.clone(), l);
            }
        }
        view
    }
}

/// `spec.volumes[].name` of a VMI; malformed entries are passed over.
fn spec_volume_names(vmi: &DynamicObject) -> BTreeSet<String> {
    vmi.data
        .get("spec")
        .and_then(|s| s.get("volumes"))
        .and_then(|v| v.as_array())
        .map(|vols| vols.iter().filter_map(|v| v.get("name")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn vmi(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn maps_attachment_pod_to_launcher_to_vmi() {
        let launcher = pod(json!({
            "metadata": {"name": "virt-launcher-vm1-abcde", "namespace": "ns1", "uid": "L1",
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "V1"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1", "uid": "V1", "controller": true}]}
        }));
        let attach = pod(json!({
            "metadata": {"name": "hp-volume-xyz", "namespace": "ns1", "uid": "A1",
                "labels": {"kubevirt.io": "hotplug-disk"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-vm1-abcde", "uid": "L1", "controller": true}]}
        }));
        let other = pod(json!({"metadata": {"name": "x", "namespace": "ns1", "uid": "X"}}));
        let v = vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns1", "uid": "V1"},
            "spec": {"volumes": [{"name": "rootdisk"}, {"name": "disk1"}, {"bogus": 1}]}
        }));
        let view = ClusterView::build([&launcher, &attach, &other], [&v]);
        assert_eq!(view.owners, BTreeMap::from([("A1".to_string(), "L1".to_string())]));
        assert_eq!(view.names["A1"].vmi.as_deref(), Some("vm1"));
        assert_eq!(view.names["A1"].pod.as_deref(), Some("hp-volume-xyz"));
        assert_eq!(view.names["L1"].namespace.as_deref(), Some("ns1"));
        assert_eq!(view.vmis["L1"], VmiRef { namespace: "ns1".into(), name: "vm1".into(), uid: "V1".into() });
        assert_eq!(view.spec_volumes["L1"], BTreeSet::from(["rootdisk".to_string(), "disk1".to_string()]));
        assert!(!view.names.contains_key("X"));
    }

    #[test]
    fn launcher_without_a_watched_vmi_still_has_a_name_but_no_spec() {
        let launcher = pod(json!({
            "metadata": {"name": "virt-launcher-vm2", "namespace": "ns2", "uid": "L2",
                "labels": {"kubevirt.io": "virt-launcher"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm2", "uid": "V2", "controller": true}]}
        }));
        let view = ClusterView::build([&launcher], []);
        assert_eq!(view.names["L2"].vmi.as_deref(), Some("vm2"));
        assert!(!view.spec_volumes.contains_key("L2"), "no spec known: no claim about unplugs");
    }
}
