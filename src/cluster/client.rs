//! The Kubernetes client: in-cluster config or a kubeconfig, with every request counted by
//! verb so that the agent's load on the API server is a metric, not a guess.

use std::path::Path;

use http::{Method, Request};
use kube::client::{Body, ClientBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::VerbLabel;

/// A request by what it does: the `verb` label of `api_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// A GET with `watch=true`: counted apart, it is the one request a steady state keeps
    /// open.
    Watch,
    Get,
    Create,
    Update,
    Patch,
    Delete,
    Other,
}

impl Verb {
    pub const ALL: [Verb; 7] =
        [Verb::Watch, Verb::Get, Verb::Create, Verb::Update, Verb::Patch, Verb::Delete, Verb::Other];

    pub fn label(self) -> &'static str {
        match self {
            Verb::Watch => "watch",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Other => "other",
        }
    }

    fn of(req: &Request<Body>) -> Self {
        let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        match *req.method() {
            Method::GET if watch => Verb::Watch,
            Method::GET => Verb::Get,
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            _ => Verb::Other,
        }
    }
}

pub async fn connect(kubeconfig: Option<&Path>, requests: Family<VerbLabel, Counter>) -> anyhow::Result<Client> {
    build(config(kubeconfig).await?, requests)
}

/// Where the API server is and how to talk to it: a kubeconfig, or the pod's own.
pub async fn config(kubeconfig: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::incluster().map_err(|e| {
            anyhow::anyhow!("not in a pod ({e}); pass --kubeconfig, or --standalone to run without Kubernetes")
        })?,
    })
}

/// A client with connections of its own, counting its requests in `requests`.
pub fn build(config: Config, requests: Family<VerbLabel, Counter>) -> anyhow::Result<Client> {
    let count = tower::util::MapRequestLayer::new(move |req: Request<Body>| {
        requests.get_or_create(&VerbLabel::new(Verb::of(&req))).inc();
        req
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}
