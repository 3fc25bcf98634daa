//! The watched objects, slimmed to the fields the agent uses. A whole Pod or VMI (managed
//! fields, specs, the kubelet's status, every other label and annotation) is never built:
//! [`PodObject`] and [`VmiObject`] deserialize only those fields, and the parser skips the
//! rest without allocating it. What the watches keep grows with the node's pods and
//! volumes, and whole objects (kept, or a list page of them at a time) were most of the
//! agent's memory in cluster mode.
//!
//! Each object is split in two: what decides roles and names ([`PodMeta`], [`VmiMeta`]:
//! a change there rebuilds the view the engine judges with), and what the agent writes and
//! compares (the pod's own conditions, the VMI's volumeStatus: a change there, such as our
//! own write coming back, only brings the writers up to date).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::conditions::CONDITION_PREFIX;
use super::view::{ANNOTATION_EPHEMERAL_PROVISIONING, LABEL_CREATED_BY, LABEL_KUBEVIRT};
use super::volume_status::VolumeStatusEntry;
use crate::model::PodUid;

/// A controller ownerReference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub kind: String,
    pub uid: String,
    pub name: String,
}

/// What decides a pod's role and names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: PodUid,
    pub name: String,
    pub namespace: String,
    /// The `kubevirt.io` label: `virt-launcher` or `hotplug-disk`.
    pub role: Option<String>,
    /// The `kubevirt.io/created-by` label: a launcher's VMI UID.
    pub created_by: Option<String>,
    /// The annotation `kubevirt.io/ephemeral-provisioning: "true"` (a trigger pod).
    pub trigger: bool,
    /// Its controller ownerReferences (one, as the API server enforces).
    pub controllers: Vec<Controller>,
    /// `creationTimestamp`, in whole seconds.
    pub created: Option<i64>,
    /// `deletionTimestamp` is set.
    pub deleting: bool,
    pub phase: Option<String>,
}

impl PodMeta {
    /// The controller ownerReference of `kind`.
    pub fn controller(&self, kind: &str) -> Option<&Controller> {
        self.controllers.iter().find(|c| c.kind == kind)
    }
}

/// A pod as the watch keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedPod {
    pub meta: PodMeta,
    /// Only the agent's own conditions (`hotplug-watchdog.io/...`): the writer compares
    /// them with what they should say.
    pub conditions: Vec<PodCondition>,
}

impl From<PodObject> for WatchedPod {
    fn from(pod: PodObject) -> Self {
        let m = pod.metadata;
        let mut labels = m.labels.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let meta = PodMeta {
            uid: m.uid.unwrap_or_default().into(),
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            role: labels.remove(LABEL_KUBEVIRT),
            created_by: labels.remove(LABEL_CREATED_BY),
            trigger: m
                .annotations
                .is_some_and(|a| a.get(ANNOTATION_EPHEMERAL_PROVISIONING).is_some_and(|v| v == "true")),
            controllers: m
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o.controller == Some(true))
                .map(|o| Controller { kind: o.kind, uid: o.uid, name: o.name })
                .collect(),
            created: m.creation_timestamp.map(|t| t.0.as_second()),
            deleting: m.deletion_timestamp.is_some(),
            phase: status.phase,
        };
        let conditions = status.conditions.into_iter().filter(|c| c.type_.starts_with(CONDITION_PREFIX)).collect();
        WatchedPod { meta, conditions }
    }
}

/// What the view needs of a VMI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub phase: Option<String>,
    /// `spec.volumes[].name`; malformed entries are passed over.
    pub spec_volumes: BTreeSet<String>,
}

/// A VMI as the watch keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedVmi {
    pub meta: VmiMeta,
    /// `status.volumeStatus`, kept only when the agent writes it (`--vmi-volume-status`).
    pub volume_status: Option<Vec<VolumeStatusEntry>>,
}

impl WatchedVmi {
    pub fn new(vmi: VmiObject, keep_volume_status: bool) -> Self {
        let m = vmi.metadata;
        let status = vmi.status.unwrap_or_default();
        let meta = VmiMeta {
            uid: m.uid.unwrap_or_default(),
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            phase: status.phase,
            spec_volumes: vmi.spec.unwrap_or_default().volumes.into_iter().filter_map(|v| v.name).collect(),
        };
        let volume_status = status.volume_status.filter(|_| keep_volume_status);
        WatchedVmi { meta, volume_status }
    }
}

// ------------------------------------------------------------------ as read from the API

/// The labels and annotations the agent reads; the parser skips every other.
const KEPT_KEYS: [&str; 3] = [LABEL_KUBEVIRT, LABEL_CREATED_BY, ANNOTATION_EPHEMERAL_PROVISIONING];

/// The metadata fields the agent reads (and `resourceVersion`, which the watch needs).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "kept_entries")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "kept_entries")]
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = MetaFields::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        owner_references: m.owner_references,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..Default::default()
    })
}

/// A string map of which only [`KEPT_KEYS`] are kept: the values of the others (a
/// `last-applied-configuration` annotation can hold a whole object) are skipped unread.
fn kept_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Kept)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if KEPT_KEYS.contains(&key.as_ref()) {
                    kept.insert(key.into_owned(), map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_option(Kept)
}

/// A string field of a custom resource, which its schema may not hold to a string: any
/// other value reads as none, rather than failing the whole watch.
pub(crate) fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<serde_json::Value>::deserialize(d)?.and_then(|v| v.as_str().map(str::to_string)))
}

/// A Pod, only the fields the agent reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodObject {
    #[serde(default, deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    status: Option<PodStatusFields>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct PodStatusFields {
    phase: Option<String>,
    #[serde(default)]
    conditions: Vec<PodCondition>,
}

impl Resource for PodObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A VirtualMachineInstance, only the fields the agent reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct VmiObject {
    #[serde(default, deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    spec: Option<VmiSpecFields>,
    status: Option<VmiStatusFields>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct VmiSpecFields {
    #[serde(default)]
    volumes: Vec<SpecVolume>,
}

/// `spec.volumes[]`: a malformed entry (no name) is passed over.
#[derive(Clone, Debug, Deserialize)]
struct SpecVolume {
    #[serde(default, deserialize_with = "lenient_text")]
    name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmiStatusFields {
    #[serde(default, deserialize_with = "lenient_text")]
    phase: Option<String>,
    volume_status: Option<Vec<VolumeStatusEntry>>,
}

impl Resource for VmiObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "VirtualMachineInstance".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "kubevirt.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "virtualmachineinstances".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_fields_used_are_read() {
        let pod: PodObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hp-volume-x", "namespace": "ns1", "uid": "A1", "resourceVersion": "7",
                "creationTimestamp": "2026-11-30T06:00:00Z",
                "labels": {"kubevirt.io": "hotplug-disk", "app": "other"},
                "annotations": {"kubevirt.io/ephemeral-provisioning": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a whole\": \"object\"}"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": "l", "uid": "L1", "controller": true},
                    {"apiVersion": "v1", "kind": "Pod", "name": "o", "uid": "O1"}]},
            "spec": {"containers": [{"name": "hotplug-disk", "image": "x"}], "nodeName": "n"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "hotplug-watchdog.io/HandoffSafe", "status": "False", "reason": "SoleBacker"}]}
        }))
        .unwrap();
        assert_eq!(pod.meta().resource_version.as_deref(), Some("7"), "the watch resumes from it");
        assert_eq!(pod.meta().labels.as_ref().unwrap().len(), 1, "other labels are not kept");
        assert_eq!(pod.meta().annotations.as_ref().unwrap().len(), 1, "other annotations are not kept");
        assert!(pod.meta().managed_fields.is_none());
        let w = WatchedPod::from(pod);
        assert_eq!(w.meta.role.as_deref(), Some("hotplug-disk"));
        assert!(w.meta.trigger);
        assert_eq!(w.meta.controllers, [Controller { kind: "Pod".into(), uid: "L1".into(), name: "l".into() }]);
        assert_eq!(w.meta.created, Some(1_796_018_400));
        assert_eq!(w.meta.phase.as_deref(), Some("Running"));
        assert_eq!(w.conditions.len(), 1, "only the agent's own conditions");
        assert_eq!(PodObject::url_path(&(), Some("ns1")), "/api/v1/namespaces/ns1/pods");
    }

    #[test]
    fn a_vmi_keeps_its_volume_names_and_status_only_when_asked() {
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns1", "uid": "V1"},
            "spec": {"domain": {"devices": {"disks": []}}, "volumes": [{"name": "rootdisk", "containerDisk": {}}, {"bogus": 1}]},
            "status": {"phase": "Running", "volumeStatus": [
                {"name": "disk1", "phase": "Ready", "reason": "VolumeReady", "target": "sda", "hotplugVolume": {}},
                {"name": 7, "phase": "Ready"}]}
        });
        let read = |keep| WatchedVmi::new(serde_json::from_value::<VmiObject>(vmi.clone()).unwrap(), keep);
        let w = read(true);
        assert_eq!(w.meta.spec_volumes, BTreeSet::from(["rootdisk".to_string()]));
        assert_eq!(w.meta.phase.as_deref(), Some("Running"));
        let entries = w.volume_status.unwrap();
        assert_eq!(entries[0].reason.as_deref(), Some("VolumeReady"));
        assert_eq!(entries[1].name, None, "a malformed entry keeps its place");
        assert_eq!(read(false).volume_status, None);
        assert_eq!(
            VmiObject::url_path(&(), Some("ns1")),
            "/apis/kubevirt.io/v1/namespaces/ns1/virtualmachineinstances"
        );
    }
}
