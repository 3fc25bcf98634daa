//! Cluster mode: node-scoped watches of this node's VMIs and KubeVirt pods, turned into a
//! [`ClusterView`] for the engine, and Events written back. The node side never waits for
//! the API server: with the server absent or down, the engine keeps judging the node and
//! the last view stays in force until the watches resume (with backoff, each time with a
//! fresh list, which also answers a 410 Gone).

pub mod client;
pub mod conditions;
pub mod events;
pub mod lease;
pub mod outcome;
pub mod status;
pub mod view;
pub mod volume_status;
pub mod write_health;

use std::sync::Arc;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::backoff::Backoff;
use crate::model::ClusterView;
use crate::verdict::Verdicts;
use status::{ConditionWriter, VmiStatusWriter};

use crate::sources::health::Health;
use crate::sources::{Message, Sender};
use view::{ATTACHMENT_ROLE, LABEL_KUBEVIRT, LABEL_NODE_NAME, LAUNCHER_ROLE};

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

/// What one watch reports to the loop that builds the view.
enum Update<K> {
    /// A complete list: the watch is (again) in sync.
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
    Failed(String),
}

/// The objects one watch holds, by UID; complete once `synced`.
struct Objects<K> {
    by_uid: BTreeMap<String, K>,
    synced: bool,
    failing: bool,
}

impl<K: Resource> Objects<K> {
    fn new() -> Self {
        Objects { by_uid: BTreeMap::new(), synced: false, failing: false }
    }

    fn uid(o: &K) -> String {
        o.meta().uid.clone().unwrap_or_default()
    }

    fn apply(&mut self, which: Watched, update: Update<K>, health: &Health) {
        match update {
            Update::Listed(list) => {
                if !self.synced || self.failing {
                    tracing::info!(watch = which.condition(), objects = list.len(), "API watch in sync");
                }
                self.by_uid = list.into_iter().map(|o| (Self::uid(&o), o)).collect();
                (self.synced, self.failing) = (true, false);
                health.set_unready(which.condition(), None);
            }
            Update::Applied(o) => {
                self.by_uid.insert(Self::uid(&o), o);
            }
            Update::Deleted(o) => {
                self.by_uid.remove(&Self::uid(&o));
            }
            Update::Failed(e) => {
                if !self.failing {
                    tracing::warn!(watch = which.condition(), error = %e, "API watch failing; retrying with backoff, node checks go on");
                }
                self.failing = true;
                health.set_unready(which.condition(), Some(format!("failing: {e}")));
            }
        }
    }
}

/// Follows one kind of object. Any error ends the watch; after a backoff it starts over
/// with a list, so that "in sync" always means a complete list was seen since the error
/// (a watch that resumes quietly would leave readiness guessing).
async fn follow<K>(api: Api<K>, config: watcher::Config, which: Watched, tx: UnboundedSender<(Watched, Update<K>)>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
        let mut listing = Vec::new();
        while let Some(event) = stream.next().await {
            let update = match event {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    listing.push(o);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    backoff.reset();
                    Update::Listed(std::mem::take(&mut listing))
                }
                Ok(watcher::Event::Apply(o)) => Update::Applied(o),
                Ok(watcher::Event::Delete(o)) => Update::Deleted(o),
                Err(e) => Update::Failed(e.to_string()),
            };
            let failed = matches!(update, Update::Failed(_));
            if tx.send((which, update)).is_err() {
                return;
            }
            if failed {
                break;
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The selectors that keep every read node-scoped: this node's KubeVirt pods and VMIs.
fn pod_selectors(node: &str) -> (String, String) {
    (format!("spec.nodeName={node}"), format!("{LABEL_KUBEVIRT} in ({LAUNCHER_ROLE},{ATTACHMENT_ROLE})"))
}

fn vmi_selector(node: &str) -> String {
    format!("{LABEL_NODE_NAME}={node}")
}

/// One look, for `scan`: two lists, no watch.
pub async fn list_view(client: Client, node: &str) -> Result<ClusterView, kube::Error> {
    let (fields, labels) = pod_selectors(node);
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default().fields(&fields).labels(&labels)).await?;
    let vmis = Api::<DynamicObject>::all_with(client, &vmi_resource())
        .list(&ListParams::default().labels(&vmi_selector(node)))
        .await?;
    Ok(ClusterView::build(pods.items.iter(), vmis.items.iter()))
}

/// Watches forever; sends a new view to the engine whenever it changes, and keeps the
/// attachment pods' conditions in line with the verdicts the engine sends back.
pub async fn watch(
    client: Client,
    node: String,
    tx: Sender,
    health: Arc<Health>,
    mut verdicts_rx: tokio::sync::watch::Receiver<Arc<Verdicts>>,
    mut conditions: ConditionWriter,
    mut volume_status: VmiStatusWriter,
) {
    let (fields, labels) = pod_selectors(&node);
    let pod_config = watcher::Config::default().fields(&fields).labels(&labels);
    let vmi_config = watcher::Config::default().labels(&vmi_selector(&node));
    for w in [Watched::Pods, Watched::Vmis] {
        health.set_unready(w.condition(), Some("not synced yet".into()));
    }
    let (pod_tx, mut pod_rx) = unbounded_channel();
    let (vmi_tx, mut vmi_rx) = unbounded_channel();
    // Supervised: a watch task that ends or panics makes /healthz fail.
    use crate::sources::health::spawn_supervised;
    spawn_supervised(&health, "pod watch", follow(Api::<Pod>::all(client.clone()), pod_config, Watched::Pods, pod_tx));
    let vmis_api = Api::<DynamicObject>::all_with(client, &vmi_resource());
    spawn_supervised(&health, "VMI watch", follow(vmis_api, vmi_config, Watched::Vmis, vmi_tx));

    let (mut pods, mut vmis) = (Objects::<Pod>::new(), Objects::<DynamicObject>::new());
    let mut last_sent: Option<ClusterView> = None;
    let mut verdicts: Option<Arc<Verdicts>> = None;
    // When to bring the pods' conditions in line next; armed by any change.
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        // New verdicts are the node's news: written at once, no coalescing window.
        let mut node_news = false;
        let flush = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((w, u)) = pod_rx.recv() => pods.apply(w, u, &health),
            Some((w, u)) = vmi_rx.recv() => vmis.apply(w, u, &health),
            Ok(()) = verdicts_rx.changed() => {
                verdicts = Some(verdicts_rx.borrow_and_update().clone());
                node_news = true;
            }
            () = flush => {
                flush_at = None;
                if let (Some(view), Some(v)) = (&last_sent, &verdicts) {
                    let launchers = view.vmis.iter().map(|(launcher, vmi)| (vmi.uid.clone(), launcher.clone())).collect();
                    // No condition before the first full scan and a view from synced watches.
                    let written = match conditions::desired(v, &view.attachment_pods) {
                        Some(desired) => conditions.flush(&pods.by_uid, &desired).await,
                        None => None,
                    };
                    let again = [written, volume_status.flush(&vmis.by_uid, &launchers, v).await];
                    flush_at = again.into_iter().flatten().min().map(Into::into);
                }
                continue;
            }
            else => return,
        }
        // A burst of changes makes one view.
        while let Ok((w, u)) = pod_rx.try_recv() {
            pods.apply(w, u, &health);
        }
        while let Ok((w, u)) = vmi_rx.try_recv() {
            vmis.apply(w, u, &health);
        }
        // Only the newest verdicts count; the channel keeps no others.
        if verdicts_rx.has_changed().unwrap_or(false) {
            verdicts = Some(verdicts_rx.borrow_and_update().clone());
            node_news = true;
        }
        // Until both hold a complete list, a view would claim volumes left specs.
        if !(pods.synced && vmis.synced) {
            continue;
        }
        // Changes of cluster objects wait a moment: a burst (a swap, our own writes coming
        // back) makes one write, and the engine's verdicts catch up with the new view.
        // Verdicts already reflect the view they were judged with.
        let coalesced = tokio::time::Instant::now() + if node_news { Duration::ZERO } else { status::COALESCE };
        flush_at = Some(flush_at.map_or(coalesced, |t| t.min(coalesced)));
        let view = ClusterView::build(pods.by_uid.values(), vmis.by_uid.values());
        if last_sent.as_ref() != Some(&view) {
            last_sent = Some(view.clone());
            if tx.send(Message::Cluster(Box::new(view))).is_err() {
                return;
            }
        }
    }
}
