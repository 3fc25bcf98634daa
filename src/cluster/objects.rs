//! The watched objects, slimmed on arrival to the fields the agent uses. A whole Pod or
//! VMI (managed fields, specs, the kubelet's status, every annotation) is dropped as soon
//! as it is read: what the watches keep grows with the node's pods and volumes, and this is
//! most of the agent's memory in cluster mode.
//!
//! Each object is split in two: what decides roles and names ([`PodMeta`], [`VmiMeta`]:
//! a change there rebuilds the view the engine judges with), and what the agent writes and
//! compares (the pod's own conditions, the VMI's volumeStatus: a change there, such as our
//! own write coming back, only brings the writers up to date).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::DynamicObject;

use super::conditions::CONDITION_PREFIX;
use super::view::{ANNOTATION_EPHEMERAL_PROVISIONING, LABEL_CREATED_BY, LABEL_KUBEVIRT};
use super::volume_status::{self, VolumeStatusEntry};
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

impl From<Pod> for WatchedPod {
    fn from(pod: Pod) -> Self {
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
        let conditions = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_.starts_with(CONDITION_PREFIX))
            .collect();
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
    pub fn new(vmi: DynamicObject, keep_volume_status: bool) -> Self {
        let m = vmi.metadata;
        let data = vmi.data;
        let spec_volumes = data
            .pointer("/spec/volumes")
            .and_then(|v| v.as_array())
            .map(|vols| vols.iter().filter_map(|v| v.get("name")?.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let meta = VmiMeta {
            uid: m.uid.unwrap_or_default(),
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            phase: data.pointer("/status/phase").and_then(|p| p.as_str()).map(str::to_string),
            spec_volumes,
        };
        let volume_status = if keep_volume_status { volume_status::entries(&data) } else { None };
        WatchedVmi { meta, volume_status }
    }
}
