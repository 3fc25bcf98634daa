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

use std::collections::BTreeMap;

use super::objects::{PodMeta, VmiMeta};
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

fn phase_is_final(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A launcher as KubeVirt makes one: labelled `kubevirt.io=virt-launcher`, controller-owned
/// by a VMI whose UID its `kubevirt.io/created-by` label repeats. (An ownerReference names
/// an object of the pod's own namespace; the VMI, when watched, is checked to be there.)
/// Returns the VMI's (uid, name).
fn confirmed_launcher_vmi<'a>(pod: &'a PodMeta, vmis: &BTreeMap<&str, &VmiMeta>) -> Option<(&'a str, &'a str)> {
    if pod.role.as_deref() != Some(LAUNCHER_ROLE) {
        return None;
    }
    let vmi = pod.controller("VirtualMachineInstance")?;
    if pod.created_by.as_deref() != Some(vmi.uid.as_str()) {
        return None;
    }
    if let Some(watched) = vmis.get(vmi.uid.as_str()) {
        if watched.namespace != pod.namespace {
            return None;
        }
    }
    Some((&vmi.uid, &vmi.name))
}

impl ClusterView {
    /// Builds the view from the watched objects. The watches are node-scoped (pods by
    /// `spec.nodeName`, VMIs by `kubevirt.io/nodeName`): every pod here is on this node.
    pub fn build<'p, 'v>(
        pods: impl IntoIterator<Item = &'p PodMeta>,
        vmis: impl IntoIterator<Item = &'v VmiMeta>,
    ) -> Self {
        let vmis_by_uid: BTreeMap<&str, &VmiMeta> = vmis.into_iter().map(|v| (v.uid.as_str(), v)).collect();
        let mut view = ClusterView::default();
        let pods: BTreeMap<&str, &PodMeta> = pods.into_iter().map(|p| (p.uid.as_str(), p)).collect();

        for (&uid, pod) in &pods {
            let Some((vmi_uid, vmi_name)) = confirmed_launcher_vmi(pod, &vmis_by_uid) else { continue };
            let vmi = vmis_by_uid.get(vmi_uid);
            let finished = if vmi.is_some_and(|v| phase_is_final(v.phase.as_deref())) {
                Some(Finished::VmiFinal)
            } else if pod.deleting || phase_is_final(pod.phase.as_deref()) {
                Some(Finished::LauncherDone)
            } else {
                None
            };
            if let Some(v) = vmi {
                view.vmis.insert(
                    uid.into(),
                    VmiRef { namespace: pod.namespace.clone(), name: v.name.clone(), uid: vmi_uid.into() },
                );
            }
            view.facts
                .launchers
                .insert(uid.into(), ApiLauncher { spec_volumes: vmi.map(|v| v.spec_volumes.clone()), finished });
            // The VMI may not be watched (yet, or any more): its name is in the
            // launcher's ownerReference too.
            view.names.insert(
                uid.into(),
                PodNames {
                    namespace: Some(pod.namespace.clone()),
                    vmi: Some(vmi_name.to_string()),
                    pod: Some(pod.name.clone()),
                },
            );
        }

        for (&uid, pod) in pods.iter().filter(|(_, p)| p.role.as_deref() == Some(ATTACHMENT_ROLE)) {
            let Some(launcher) = pod.controller("Pod").map(|c| c.uid.as_str()) else { continue };
            // The launcher must be a confirmed launcher of the same namespace. One the
            // watch does not hold (yet) leaves the pod in doubt (Unknown); one it holds
            // that is no launcher, or lives in another namespace, disowns the pod.
            match pods.get(launcher) {
                Some(l) if view.facts.launchers.contains_key(launcher) && l.namespace == pod.namespace => {}
                Some(_) => continue,
                None => {}
            }
            // The API server always sets creationTimestamp; without one, count it oldest.
            let created = pod.created.unwrap_or(0);
            view.facts
                .attachment_pods
                .insert(uid.into(), ApiAttachment { launcher: launcher.into(), created, trigger: pod.trigger });
            view.attachment_pods.insert(uid.into(), pod.name.clone());
            let vmi = view.names.get(launcher).and_then(|n| n.vmi.clone());
            view.names.insert(
                uid.into(),
                PodNames { namespace: Some(pod.namespace.clone()), vmi, pod: Some(pod.name.clone()) },
            );
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::objects::{PodObject, VmiObject, WatchedPod, WatchedVmi};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;
    use std::collections::BTreeSet;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn vmi(v: serde_json::Value) -> VmiMeta {
        WatchedVmi::new(serde_json::from_value::<VmiObject>(v).unwrap(), false).meta
    }

    /// The view as the watches build it: from the slimmed objects.
    fn build<'a, 'b>(
        pods: impl IntoIterator<Item = &'a Pod>,
        vmis: impl IntoIterator<Item = &'b VmiMeta>,
    ) -> ClusterView {
        let slim = |p: &Pod| serde_json::from_value::<PodObject>(serde_json::to_value(p).unwrap()).unwrap();
        let pods: Vec<PodMeta> = pods.into_iter().map(|p| WatchedPod::from(slim(p)).meta).collect();
        ClusterView::build(&pods, vmis)
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

    fn vm1(phase: &str) -> VmiMeta {
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
        let view = build([&l1, &attach, &other], [&v]);
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
        let view = build([&l2], []);
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
        let view = build(
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
        assert!(build([&good], [&elsewhere]).facts.launchers.is_empty());
    }

    #[test]
    fn finished_vmis_launchers_and_trigger_pods_are_marked() {
        let l1 = launcher("L1", "ns1", "V1", "V1");
        let view = build([&l1], [&vm1("Failed")]);
        assert_eq!(view.facts.launchers["L1"].finished, Some(Finished::VmiFinal));
        for status in [
            json!({"metadata": {"deletionTimestamp": "2026-11-30T06:00:00Z"}}),
            json!({"status": {"phase": "Succeeded"}}),
        ] {
            let mut done = serde_json::to_value(&l1).unwrap();
            json_patch::merge(&mut done, &status);
            let done = pod(done);
            let view = build([&done], [&vm1("Running")]);
            assert_eq!(view.facts.launchers["L1"].finished, Some(Finished::LauncherDone), "{status}");
        }
        let mut trigger = serde_json::to_value(attachment("T1", "ns1", owned_by("L1"))).unwrap();
        json_patch::merge(
            &mut trigger,
            &json!({"metadata": {"annotations": {ANNOTATION_EPHEMERAL_PROVISIONING: "true"}}}),
        );
        let trigger = pod(trigger);
        let view = build([&l1, &trigger], [&vm1("Running")]);
        assert!(view.facts.attachment_pods["T1"].trigger);
    }
}
