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

use crate::model::{ApiAttachment, ApiLauncher, Finished, PodNames};
pub use crate::model::{ClusterView, VmiRef};

pub const LABEL_KUBEVIRT: &str = "kubevirt.io";
pub const LAUNCHER_ROLE: &str = "virt-launcher";
pub const ATTACHMENT_ROLE: &str = "hotplug-disk";
pub const LABEL_CREATED_BY: &str = "kubevirt.io/created-by";
pub const LABEL_NODE_NAME: &str = "kubevirt.io/nodeName";
/// KubeVirt's annotation on WaitForFirstConsumer trigger pods (`EphemeralProvisioningObject`
/// in `kubevirt.io/api/core/v1/types.go`): they share the attachment pods' prefix, label and
/// owner, but only get a PVC bound.
pub const ANNOTATION_EPHEMERAL_PROVISIONING: &str = "kubevirt.io/ephemeral-provisioning";

fn role(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(LABEL_KUBEVIRT).map(String::as_str)
}

/// The controller ownerReference of `kind`: (uid, name).
fn controller_owner<'a>(pod: &'a Pod, kind: &str) -> Option<(&'a str, &'a str)> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| (o.uid.as_str(), o.name.as_str()))
}

fn phase_is_final(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A launcher as KubeVirt makes one: labelled `kubevirt.io=virt-launcher`, controller-owned
/// by a VMI whose UID its `kubevirt.io/created-by` label repeats. (An ownerReference names
/// an object of the pod's own namespace; the VMI, when watched, is checked to be there.)
fn confirmed_launcher_vmi<'a>(pod: &'a Pod, vmis: &BTreeMap<&str, &DynamicObject>) -> Option<(&'a str, &'a str)> {
    if role(pod) != Some(LAUNCHER_ROLE) {
        return None;
    }
    let (vmi_uid, vmi_name) = controller_owner(pod, "VirtualMachineInstance")?;
    let created_by = pod.metadata.labels.as_ref()?.get(LABEL_CREATED_BY)?;
    if created_by != vmi_uid {
        return None;
    }
    if let Some(vmi) = vmis.get(vmi_uid) {
        if vmi.metadata.namespace != pod.metadata.namespace {
            return None;
        }
    }
    Some((vmi_uid, vmi_name))
}

impl ClusterView {
    /// Builds the view from the watched objects. The watches are node-scoped (pods by
    /// `spec.nodeName`, VMIs by `kubevirt.io/nodeName`): every pod here is on this node.
    pub fn build<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        vmis: impl IntoIterator<Item = &'a DynamicObject>,
    ) -> Self {
        let vmis_by_uid: BTreeMap<&str, &DynamicObject> =
            vmis.into_iter().filter_map(|v| Some((v.metadata.uid.as_deref()?, v))).collect();
        let mut view = ClusterView::default();
        let pods: BTreeMap<&str, &Pod> =
            pods.into_iter().filter_map(|p| Some((p.metadata.uid.as_deref()?, p))).collect();

        for (&uid, pod) in &pods {
            let Some((vmi_uid, vmi_name)) = confirmed_launcher_vmi(pod, &vmis_by_uid) else { continue };
            let vmi = vmis_by_uid.get(vmi_uid);
            let finished = if vmi.is_some_and(|v| phase_is_final(vmi_phase(v))) {
                Some(Finished::VmiFinal)
            } else if pod.metadata.deletion_timestamp.is_some()
                || phase_is_final(pod.status.as_ref().and_then(|s| s.phase.as_deref()))
            {
                Some(Finished::LauncherDone)
            } else {
                None
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if let Some(v) = vmi {
                view.vmis.insert(
                    uid.into(),
                    VmiRef {
                        namespace: ns.clone(),
                        name: v.metadata.name.clone().unwrap_or_default(),
                        uid: vmi_uid.into(),
                    },
                );
            }
            view.facts
                .launchers
                .insert(uid.into(), ApiLauncher { spec_volumes: vmi.map(|v| spec_volume_names(v)), finished });
            // The VMI may not be watched (yet, or any more): its name is in the
            // launcher's ownerReference too.
            view.names.insert(
                uid.into(),
                PodNames { namespace: Some(ns), vmi: Some(vmi_name.to_string()), pod: pod.metadata.name.clone() },
            );
        }

        for (&uid, pod) in pods.iter().filter(|(_, p)| role(p) == Some(ATTACHMENT_ROLE)) {
            let Some((launcher, _)) = controller_owner(pod, "Pod") else { continue };
            // The launcher must be a confirmed launcher of the same namespace. One the
            // watch does not hold (yet) leaves the pod in doubt (Unknown); one it holds
            // that is no launcher, or lives in another namespace, disowns the pod.
            match pods.get(launcher) {
                Some(l)
                    if view.facts.launchers.contains_key(launcher)
                        && l.metadata.namespace == pod.metadata.namespace => {}
                Some(_) => continue,
                None => {}
            }
            let trigger = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_EPHEMERAL_PROVISIONING))
                .is_some_and(|v| v == "true");
            // The API server always sets creationTimestamp; without one, count it oldest.
            let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
            view.facts
                .attachment_pods
                .insert(uid.into(), ApiAttachment { launcher: launcher.into(), created, trigger });
            view.attachment_pods.insert(uid.into(), pod.metadata.name.clone().unwrap_or_default());
            let vmi = view.names.get(launcher).and_then(|n| n.vmi.clone());
            view.names.insert(
                uid.into(),
                PodNames { namespace: pod.metadata.namespace.clone(), vmi, pod: pod.metadata.name.clone() },
            );
        }
        view
    }
}

fn vmi_phase(vmi: &DynamicObject) -> Option<&str> {
    vmi.data.get("status")?.get("phase")?.as_str()
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

    fn launcher(uid: &str, ns: &str, vmi_uid: &str, created_by: &str) -> Pod {
        pod(json!({
            "metadata": {"name": format!("virt-launcher-{uid}"), "namespace": ns, "uid": uid,
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": created_by},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1", "uid": vmi_uid, "controller": true}]}
        }))
    }

    fn attachment(uid: &str, ns: &str, owner: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"name": format!("hp-volume-{uid}"), "namespace": ns, "uid": uid,
                "creationTimestamp": "2026-11-30T06:00:00Z",
                "labels": {"kubevirt.io": "hotplug-disk"}, "ownerReferences": owner}
        }))
    }

    fn owned_by(launcher: &str) -> serde_json::Value {
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": launcher, "controller": true}])
    }

    fn vm1(phase: &str) -> DynamicObject {
        vmi(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns1", "uid": "V1"},
            "spec": {"volumes": [{"name": "rootdisk"}, {"name": "disk1"}, {"bogus": 1}]},
            "status": {"phase": phase}
        }))
    }

    #[test]
    fn maps_attachment_pod_to_launcher_to_vmi() {
        let l1 = launcher("L1", "ns1", "V1", "V1");
        let attach = attachment("A1", "ns1", owned_by("L1"));
        let other = pod(json!({"metadata": {"name": "x", "namespace": "ns1", "uid": "X"}}));
        let v = vm1("Running");
        let view = ClusterView::build([&l1, &attach, &other], [&v]);
        assert_eq!(view.facts.attachment_pods["A1"].launcher, "L1");
        assert_eq!(view.facts.attachment_pods["A1"].created, 1_796_018_400);
        assert!(!view.facts.attachment_pods["A1"].trigger);
        assert_eq!(view.attachment_pods["A1"], "hp-volume-A1");
        assert_eq!(view.names["A1"].vmi.as_deref(), Some("vm1"));
        assert_eq!(view.names["L1"].namespace.as_deref(), Some("ns1"));
        assert_eq!(view.vmis["L1"], VmiRef { namespace: "ns1".into(), name: "vm1".into(), uid: "V1".into() });
        let spec = BTreeSet::from(["rootdisk".to_string(), "disk1".to_string()]);
        assert_eq!(view.facts.launchers["L1"], ApiLauncher { spec_volumes: Some(spec), finished: None });
        assert!(!view.names.contains_key("X"));
    }

    #[test]
    fn launcher_without_a_watched_vmi_still_has_a_name_but_no_spec() {
        let l2 = launcher("L2", "ns2", "V2", "V2");
        let view = ClusterView::build([&l2], []);
        assert_eq!(view.names["L2"].vmi.as_deref(), Some("vm1"));
        assert_eq!(view.facts.launchers["L2"].spec_volumes, None, "no spec known: no claim about unplugs");
    }

    /// Roles come from the API's owner chain, checked link by link: a pod that claims a
    /// role it cannot prove gets none.
    #[test]
    fn only_a_complete_owner_chain_confirms_a_role() {
        let v = vm1("Running");
        let good = launcher("L1", "ns1", "V1", "V1");
        // A launcher whose created-by label does not repeat its VMI owner's UID.
        let forged_launcher = launcher("L2", "ns1", "V1", "V9");
        // An attachment pod of another namespace naming the victim's launcher UID.
        let cross_ns = attachment("A2", "evil", owned_by("L1"));
        // One owned by a pod that is not a confirmed launcher.
        let owned_by_forged = attachment("A3", "ns1", owned_by("L2"));
        // The label alone, no controller ownerReference.
        let label_only = attachment("A4", "ns1", json!([]));
        let not_controller = attachment(
            "A5",
            "ns1",
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "L1", "controller": false}]),
        );
        // Its launcher is not in the watch cache (yet): kept, to be reported Unknown.
        let launcher_unseen = attachment("A6", "ns1", owned_by("L7"));
        let view = ClusterView::build(
            [&good, &forged_launcher, &cross_ns, &owned_by_forged, &label_only, &not_controller, &launcher_unseen],
            [&v],
        );
        assert_eq!(view.facts.launchers.keys().collect::<Vec<_>>(), ["L1"]);
        assert_eq!(view.facts.attachment_pods.keys().collect::<Vec<_>>(), ["A6"]);
        assert_eq!(
            view.attachment_pods.keys().collect::<Vec<_>>(),
            ["A6"],
            "conditions only on pods the API vouches for"
        );
        // The same VMI UID watched in another namespace disowns the launcher too.
        let elsewhere = vmi(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "other", "uid": "V1"}}));
        assert!(ClusterView::build([&good], [&elsewhere]).facts.launchers.is_empty());
    }

    #[test]
    fn finished_vmis_launchers_and_trigger_pods_are_marked() {
        let l1 = launcher("L1", "ns1", "V1", "V1");
        let view = ClusterView::build([&l1], [&vm1("Failed")]);
        assert_eq!(view.facts.launchers["L1"].finished, Some(Finished::VmiFinal));
        for status in [
            json!({"metadata": {"deletionTimestamp": "2026-11-30T06:00:00Z"}}),
            json!({"status": {"phase": "Succeeded"}}),
        ] {
            let mut done = serde_json::to_value(&l1).unwrap();
            json_patch::merge(&mut done, &status);
            let done = pod(done);
            let view = ClusterView::build([&done], [&vm1("Running")]);
            assert_eq!(view.facts.launchers["L1"].finished, Some(Finished::LauncherDone), "{status}");
        }
        let mut trigger = serde_json::to_value(attachment("T1", "ns1", owned_by("L1"))).unwrap();
        json_patch::merge(
            &mut trigger,
            &json!({"metadata": {"annotations": {ANNOTATION_EPHEMERAL_PROVISIONING: "true"}}}),
        );
        let trigger = pod(trigger);
        let view = ClusterView::build([&l1, &trigger], [&vm1("Running")]);
        assert!(view.facts.attachment_pods["T1"].trigger);
    }
}
