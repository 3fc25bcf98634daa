//! Cluster mode: node-scoped watches of this node's VMIs and KubeVirt pods, turned into a
//! [`ClusterView`] for the engine, and Events written back. The node side never waits for
//! the API server: with the server absent or down, the engine keeps judging the node and
//! the last view stays in force until the watches resume (with backoff, each time with a
//! fresh list, which also answers a 410 Gone).

pub mod client;
pub mod conditions;
pub mod events;
pub mod lease;
pub mod objects;
pub mod outcome;
pub mod status;
pub mod view;
pub mod volume_status;
pub mod write_health;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, GroupVersionKind, ListParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::model::{ClusterView, PodUid};
use objects::{PodObject, VmiObject, WatchedPod, WatchedVmi};

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

/// What one watch reports to the loop that builds the view, objects already slimmed.
enum Update<T> {
    /// A complete list: the watch is (again) in sync.
    Listed(Vec<T>),
    Applied(T),
    Deleted(T),
    Failed(String),
}

/// A watched object, split into what decides roles (a change rebuilds the view) and what
/// only the status writers compare.
trait Slim {
    type Meta: PartialEq;
    fn uid(&self) -> &str;
    fn meta(&self) -> &Self::Meta;
}

impl Slim for WatchedPod {
    type Meta = objects::PodMeta;
    fn uid(&self) -> &str {
        &self.meta.uid
    }
    fn meta(&self) -> &Self::Meta {
        &self.meta
    }
}

impl Slim for WatchedVmi {
    type Meta = objects::VmiMeta;
    fn uid(&self) -> &str {
        &self.meta.uid
    }
    fn meta(&self) -> &Self::Meta {
        &self.meta
    }
}

/// What changed with one batch of updates.
#[derive(Clone, Copy, Default)]
struct Changed {
    /// Something that decides roles or names: the view is built again.
    roles: bool,
    /// Anything at all, a status the agent writes included: the writers look again.
    any: bool,
}

impl std::ops::BitOrAssign for Changed {
    fn bitor_assign(&mut self, other: Changed) {
        self.roles |= other.roles;
        self.any |= other.any;
    }
}

/// The objects one watch holds, by UID; complete once `synced`. A persistent map, shared
/// with the status writers' snapshots: a snapshot costs nothing and a change costs
/// O(log n), so an update (our own writes coming back among them) costs the same on a node
/// of ten pods and of thousands, and the writers find what changed without visiting the rest.
struct Objects<T> {
    by_uid: imbl::OrdMap<PodUid, Arc<T>>,
    synced: bool,
    failing: bool,
}

impl<T: Slim> Objects<T> {
    fn new() -> Self {
        Objects { by_uid: imbl::OrdMap::new(), synced: false, failing: false }
    }

    fn put(&mut self, o: T) -> Changed {
        let uid = PodUid::from(o.uid());
        let roles = self.by_uid.get(uid.as_str()).is_none_or(|old| old.meta() != o.meta());
        self.by_uid.insert(uid, Arc::new(o));
        Changed { roles, any: true }
    }

    fn apply(&mut self, which: Watched, update: Update<T>, health: &Health) -> Changed {
        match update {
            Update::Listed(list) => {
                if !self.synced || self.failing {
                    tracing::info!(watch = which.condition(), objects = list.len(), "API watch in sync");
                }
                self.by_uid = list.into_iter().map(|o| (PodUid::from(o.uid()), Arc::new(o))).collect();
                (self.synced, self.failing) = (true, false);
                health.set_unready(which.condition(), None);
                Changed { roles: true, any: true }
            }
            Update::Applied(o) => self.put(o),
            Update::Deleted(o) => {
                let gone = self.by_uid.remove(o.uid()).is_some();
                Changed { roles: gone, any: gone }
            }
            Update::Failed(e) => {
                if !self.failing {
                    tracing::warn!(watch = which.condition(), error = %e, "API watch failing; retrying with backoff, node checks go on");
                }
                self.failing = true;
                health.set_unready(which.condition(), Some(format!("failing: {e}")));
                Changed::default()
            }
        }
    }
}

/// How many updates of one watch may wait for the loop that builds the view. Full, the
/// watch task waits (backpressure): kube's watcher then reads no further from the API
/// server, whose watch buffers the rest (or ends it, and the relist brings everything).
/// Nothing is lost, and memory stays bounded while the loop catches up.
const UPDATE_QUEUE: usize = 256;

/// Follows one kind of object, slimming each as it arrives (`slim`). Any error ends the
/// watch; after a jittered backoff it starts over with a list, so that "in sync" always
/// means a complete list was seen since the error. (kube's watcher would resume the watch
/// quietly from its last resourceVersion, emitting nothing, and readiness could not tell
/// when it is caught up.)
async fn follow<K, T>(api: Api<K>, config: watcher::Config, slim: impl Fn(K) -> T, tx: mpsc::Sender<Update<T>>)
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
                    listing.push(slim(o));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    backoff.reset();
                    Update::Listed(std::mem::take(&mut listing))
                }
                Ok(watcher::Event::Apply(o)) => Update::Applied(slim(o)),
                Ok(watcher::Event::Delete(o)) => Update::Deleted(slim(o)),
                Err(e) => Update::Failed(e.to_string()),
            };
            let failed = matches!(update, Update::Failed(_));
            if tx.send(update).await.is_err() {
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
    let pods =
        Api::<PodObject>::all(client.clone()).list(&ListParams::default().fields(&fields).labels(&labels)).await?;
    let vmis = Api::<VmiObject>::all(client).list(&ListParams::default().labels(&vmi_selector(node))).await?;
    let pods: Vec<_> = pods.items.into_iter().map(|p| WatchedPod::from(p).meta).collect();
    let vmis: Vec<_> = vmis.items.into_iter().map(|v| WatchedVmi::new(v, false).meta).collect();
    Ok(ClusterView::build(&pods, &vmis))
}

/// What the status writers see of the cluster: the newest view and the objects it was
/// built from, as the watches hold them.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub view: Arc<ClusterView>,
    pub pods: imbl::OrdMap<PodUid, Arc<WatchedPod>>,
    pub vmis: imbl::OrdMap<PodUid, Arc<WatchedVmi>>,
}

/// Watches forever: sends a new view to the engine whenever a role-relevant field of a
/// pod or VMI changes (and the view with it), and the newest objects to the status
/// writers (`observed`), which run on their own task: a slow or dead API server never
/// stalls this loop. `keep_volume_status`: the VMI writer is on and needs volumeStatus.
pub async fn watch(
    client: Client,
    node: String,
    tx: Sender,
    health: Arc<Health>,
    observed: tokio::sync::watch::Sender<Arc<Observed>>,
    keep_volume_status: bool,
) {
    let (fields, labels) = pod_selectors(&node);
    let pod_config = watcher::Config::default().fields(&fields).labels(&labels);
    let vmi_config = watcher::Config::default().labels(&vmi_selector(&node));
    for w in [Watched::Pods, Watched::Vmis] {
        health.set_unready(w.condition(), Some("not synced yet".into()));
    }
    let (pod_tx, mut pod_rx) = mpsc::channel(UPDATE_QUEUE);
    let (vmi_tx, mut vmi_rx) = mpsc::channel(UPDATE_QUEUE);
    // Supervised: a watch task that ends or panics makes /healthz fail.
    use crate::sources::health::spawn_supervised;
    let pods_api = Api::<PodObject>::all(client.clone());
    spawn_supervised(&health, "pod watch", follow(pods_api, pod_config, WatchedPod::from, pod_tx));
    let vmis_api = Api::<VmiObject>::all(client);
    let slim_vmi = move |v| WatchedVmi::new(v, keep_volume_status);
    spawn_supervised(&health, "VMI watch", follow(vmis_api, vmi_config, slim_vmi, vmi_tx));

    let (mut pods, mut vmis) = (Objects::<WatchedPod>::new(), Objects::<WatchedVmi>::new());
    let mut view: Option<Arc<ClusterView>> = None;
    loop {
        let mut changed = tokio::select! {
            Some(u) = pod_rx.recv() => pods.apply(Watched::Pods, u, &health),
            Some(u) = vmi_rx.recv() => vmis.apply(Watched::Vmis, u, &health),
            else => return,
        };
        // A burst of changes makes one view.
        while let Ok(u) = pod_rx.try_recv() {
            changed |= pods.apply(Watched::Pods, u, &health);
        }
        while let Ok(u) = vmi_rx.try_recv() {
            changed |= vmis.apply(Watched::Vmis, u, &health);
        }
        // Until both hold a complete list, a view would claim volumes left specs.
        if !(pods.synced && vmis.synced && changed.any) {
            continue;
        }
        if changed.roles || view.is_none() {
            let new = ClusterView::build(pods.by_uid.values().map(|p| &p.meta), vmis.by_uid.values().map(|v| &v.meta));
            if view.as_deref() != Some(&new) {
                if tx.send(Message::Cluster(Box::new(new.clone()))).is_err() {
                    return;
                }
                view = Some(Arc::new(new));
            }
        }
        let Some(view) = &view else { continue };
        observed.send_replace(Arc::new(Observed {
            view: view.clone(),
            pods: pods.by_uid.clone(),
            vmis: vmis.by_uid.clone(),
        }));
    }
}
