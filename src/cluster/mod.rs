//! Cluster mode: node-scoped watches of this node's VMIs and KubeVirt pods, turned into a
//! [`ClusterView`] for the engine, and Events written back. The node side never waits for
//! the API server: with the server absent or down, the engine keeps judging the node and
//! the last view stays in force until the watches resume (with backoff; a 410 Gone makes
//! the watcher list again).

pub mod client;
pub mod events;
pub mod view;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::sources::health::Health;
use crate::sources::{Message, Sender};
use view::{ClusterView, ATTACHMENT_ROLE, LABEL_KUBEVIRT, LABEL_NODE_NAME, LAUNCHER_ROLE};

pub fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Pods,
    Vmis,
}

impl Watched {
    fn condition(self) -> &'static str {
        match self {
            Watched::Pods => "pod watch",
            Watched::Vmis => "VMI watch",
        }
    }
}

/// Watches forever; sends a new view to the engine whenever it changes.
pub async fn watch(client: Client, node: String, tx: Sender, health: Arc<Health>) {
    let pod_config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&format!("{LABEL_KUBEVIRT} in ({LAUNCHER_ROLE},{ATTACHMENT_ROLE})"));
    let vmi_config = watcher::Config::default().labels(&format!("{LABEL_NODE_NAME}={node}"));

    let pod_writer: Writer<Pod> = Writer::new(());
    let pods = pod_writer.as_reader();
    let ar = vmi_resource();
    let vmi_writer: Writer<DynamicObject> = Writer::new(ar.clone());
    let vmis = vmi_writer.as_reader();

    for w in [Watched::Pods, Watched::Vmis] {
        health.set_unready(w.condition(), Some("not synced yet".into()));
    }
    let pod_events = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .reflect(pod_writer)
        .map(|e| (Watched::Pods, e.map(|ev| matches!(ev, watcher::Event::InitDone))));
    let vmi_events = watcher(Api::<DynamicObject>::all_with(client, &ar), vmi_config)
        .default_backoff()
        .reflect(vmi_writer)
        .map(|e| (Watched::Vmis, e.map(|ev| matches!(ev, watcher::Event::InitDone))));
    // A burst of changes makes one view.
    let mut events = std::pin::pin!(futures::stream::select(pod_events, vmi_events).ready_chunks(512));

    let mut synced = [false, false];
    let mut failing = [false, false];
    let mut last_sent: Option<ClusterView> = None;
    while let Some(batch) = events.next().await {
        for (which, result) in batch {
            let i = which as usize;
            match result {
                Ok(init_done) => {
                    if init_done || synced[i] {
                        if !synced[i] || failing[i] {
                            tracing::info!(watch = which.condition(), "API watch in sync");
                        }
                        synced[i] = true;
                        failing[i] = false;
                        health.set_unready(which.condition(), None);
                    }
                }
                Err(e) => {
                    if !failing[i] {
                        tracing::warn!(watch = which.condition(), error = %e, "API watch failing; retrying with backoff, node checks go on");
                    }
                    failing[i] = true;
                    health.set_unready(which.condition(), Some(format!("failing: {e}")));
                }
            }
        }
        // Until both stores hold a complete list, a view would claim volumes left specs.
        if !(synced[0] && synced[1]) {
            continue;
        }
        let (pod_list, vmi_list) = (pods.state(), vmis.state());
        let view = ClusterView::build(pod_list.iter().map(|p| p.as_ref()), vmi_list.iter().map(|v| v.as_ref()));
        if last_sent.as_ref() != Some(&view) {
            last_sent = Some(view.clone());
            if tx.send(Message::Cluster(Box::new(view))).is_err() {
                return;
            }
        }
    }
}
