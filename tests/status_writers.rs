//! The status writers (attachment-pod conditions, VMI volumeStatus) against a mock API
//! server: an in-process HTTP server on 127.0.0.1 that records every request and answers
//! with canned responses (200, 404, 409, 403, 401, 500, or no answer at all), and a
//! kube::Client pointed at it. No root, no control plane: what is checked is behaviour
//! (requests made, their paths and bodies, retries and their spacing bounds, the metric
//! series, readiness), never how fast anything is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use tokio::sync::watch;

use hotplug_watchdog::cluster::events::{EventSender, STATUS_WRITE_REJECTED};
use hotplug_watchdog::cluster::lease;
use hotplug_watchdog::cluster::objects::{PodMeta, VmiMeta, WatchedPod, WatchedVmi};
use hotplug_watchdog::cluster::outcome::{WriteKind, WriteResult};
use hotplug_watchdog::cluster::status::{self, ConditionWriter, VmiStatusMode, VmiStatusWriter};
use hotplug_watchdog::cluster::volume_status::entries;
use hotplug_watchdog::cluster::write_health::WriteHealth;
use hotplug_watchdog::cluster::Observed;
use hotplug_watchdog::device::DevNum;
use hotplug_watchdog::inventory::{ApiAttachment, ApiLauncher, ClusterFacts, FullScan, Inventory, Observation};
use hotplug_watchdog::metrics::WriteLabels;
use hotplug_watchdog::model::{ClusterView, LauncherEntry, PodDisks, PodUid, VmiRef};
use hotplug_watchdog::snapshot::Snapshot;
use hotplug_watchdog::sources::health::Health;
use hotplug_watchdog::verdict::{judge, Verdicts};

const NS: &str = "ns1";

/// What the mock answers to one request.
#[derive(Clone, Debug)]
enum Answer {
    /// 200 with this body.
    Ok(Value),
    /// An API error with this code.
    Status(u16),
    /// No answer, ever (past the writer's timeout).
    Hang,
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    body: Value,
    at: Instant,
}

/// Answers by path, in order; a path with no answer left gets `fallback`.
#[derive(Clone)]
struct Mock {
    requests: Arc<Mutex<Vec<Request>>>,
    answers: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    fallback: Answer,
}

async fn answer(State(mock): State<Mock>, req: axum::extract::Request) -> Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    mock.requests.lock().unwrap().push(Request { method, path: path.clone(), body, at: Instant::now() });
    let next = mock.answers.lock().unwrap().get_mut(&path).and_then(VecDeque::pop_front);
    let json = |code: u16, body: Value| {
        let content_type = [(axum::http::header::CONTENT_TYPE, "application/json")];
        (StatusCode::from_u16(code).unwrap(), content_type, body.to_string()).into_response()
    };
    match next.unwrap_or_else(|| mock.fallback.clone()) {
        Answer::Ok(body) => json(200, body),
        Answer::Status(code) => json(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("mock says {code}"), "reason": "Mock", "code": code}),
        ),
        Answer::Hang => std::future::pending().await,
    }
}

impl Mock {
    async fn start(fallback: Answer, answers: &[(&str, Vec<Answer>)]) -> (Mock, kube::Client) {
        let mock = Mock {
            requests: Default::default(),
            answers: Arc::new(Mutex::new(
                answers.iter().map(|(p, a)| (p.to_string(), a.iter().cloned().collect())).collect(),
            )),
            fallback,
        };
        let app = axum::Router::new().fallback(answer).with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (mock, client)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn to(&self, path: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }
}

/// Waits (in real time, polling) until `done` holds; fails after 20 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_path(pod: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{pod}/status")
}

fn pod_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}})
}

/// Verdicts that speak for the cluster (full scan, roles from the API) in which the node
/// shows none of the attachment pods: each should say `Unknown`/`NotOnNode`.
fn verdicts_for(pods: &[&str]) -> Verdicts {
    let mut inv = Inventory::default();
    inv.apply(Observation::FullScan(FullScan { seq: 1, ..Default::default() }));
    let attachment = |_| ApiAttachment { launcher: "L".into(), created: 100, trigger: false };
    inv.apply(Observation::Cluster(ClusterFacts {
        launchers: BTreeMap::from([("L".into(), ApiLauncher::default())]),
        attachment_pods: pods.iter().map(|p| (PodUid::from(*p), attachment(p))).collect(),
    }));
    judge(&inv)
}

/// What the watches would show: these attachment pods, confirmed, without conditions.
fn observed_pods(pods: &[&str]) -> Observed {
    let mut view = ClusterView::default();
    let mut watched = imbl::OrdMap::new();
    for p in pods {
        view.attachment_pods.insert(PodUid::from(*p), p.to_string());
        let meta = PodMeta { uid: PodUid::from(*p), name: p.to_string(), namespace: NS.into(), ..Default::default() };
        watched.insert(PodUid::from(*p), Arc::new(WatchedPod { meta, conditions: vec![] }));
    }
    Observed { view: Arc::new(view), pods: watched, vmis: imbl::OrdMap::new() }
}

struct Writers {
    writes: Family<WriteLabels, Counter>,
    failing: Gauge,
    health: Arc<Health>,
    verdicts: watch::Sender<Arc<Snapshot>>,
    observed: watch::Sender<Arc<Observed>>,
    events: tokio::sync::mpsc::Receiver<hotplug_watchdog::cluster::events::VmiEvent>,
}

impl Writers {
    fn start(client: kube::Client, vmi_mode: VmiStatusMode) -> Writers {
        Self::start_after(client, vmi_mode, std::future::ready(()))
    }

    /// Started after `lease_first`, as `run` starts them after the lease's first write.
    fn start_after(
        client: kube::Client,
        vmi_mode: VmiStatusMode,
        lease_first: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Writers {
        let writes = Family::<WriteLabels, Counter>::default();
        let failing = Gauge::default();
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let failures = WriteHealth::new(WriteKind::PodConditions, health.clone(), failing.clone());
        let (events_tx, events) = EventSender::channel(Default::default());
        let conditions = ConditionWriter::new(client.clone(), writes.clone(), failures);
        let volume_status = VmiStatusWriter::new(client, vmi_mode, writes.clone(), Some(events_tx));
        let (verdicts, verdicts_rx) = watch::channel(Arc::default());
        let (observed, observed_rx) = watch::channel(Arc::default());
        tokio::spawn(status::run(conditions, volume_status, verdicts_rx, observed_rx, lease_first));
        Writers { writes, failing, health, verdicts, observed, events }
    }

    /// The node's news and the cluster's objects, as the engine and the watches send them.
    fn show(&self, verdicts: Verdicts, observed: Observed) {
        self.observed.send_replace(Arc::new(observed));
        self.news(verdicts);
    }

    /// New verdicts from the engine, in a snapshot of their own.
    fn news(&self, verdicts: Verdicts) {
        let snapshot = Snapshot { verdicts: Arc::new(verdicts), ..Default::default() };
        self.verdicts.send_replace(Arc::new(snapshot));
    }

    fn count(&self, kind: WriteKind, result: WriteResult) -> u64 {
        self.writes.get_or_create(&WriteLabels::new(kind, result)).get()
    }
}

#[tokio::test]
async fn each_pod_is_written_once_with_only_our_conditions() {
    let pods = ["hp-a", "hp-b", "hp-c"];
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[]).await;
    let w = Writers::start(client, VmiStatusMode::Off);
    w.show(verdicts_for(&pods), observed_pods(&pods));
    until("three writes", || w.count(WriteKind::PodConditions, WriteResult::Ok) == 3).await;
    for pod in pods {
        let reqs = mock.to(&status_path(pod));
        assert_eq!(reqs.len(), 1, "{pod}: {reqs:?}");
        assert_eq!(reqs[0].method, "PATCH");
        let conditions = reqs[0].body["status"]["conditions"].as_array().unwrap();
        let types: Vec<&str> = conditions.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["hotplug-watchdog.io/DevicesPresent", "hotplug-watchdog.io/HandoffSafe"]);
        assert!(conditions.iter().all(|c| c["status"] == "Unknown" && c["reason"] == "NotOnNode"), "{conditions:?}");
    }
    assert_eq!(w.health.readiness(), Ok(()));
    assert_eq!(w.failing.get(), 0);
    // The watch has not echoed the writes yet: the same words are not written again, even
    // when the node's news comes again.
    w.news(verdicts_for(&pods));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.requests().len(), 3, "no repeat before the echo");
}

/// The writers wait for the lease's first write to be answered (`lease::first_outcome`):
/// nothing before it, everything at once after it.
#[tokio::test]
async fn nothing_is_written_before_the_lease_was_answered() {
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[]).await;
    let (answered, answers) = watch::channel(false);
    let lease_first = lease::first_outcome(answers, Duration::from_secs(3600));
    let w = Writers::start_after(client, VmiStatusMode::Off, lease_first);
    let pods = ["hp-a", "hp-b"];
    w.show(verdicts_for(&pods), observed_pods(&pods));
    // Without the wait, both writes go out 5 ms after the news.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mock.requests().is_empty(), "written before the lease: {:?}", mock.requests());
    answered.send_replace(true);
    until("both writes", || w.count(WriteKind::PodConditions, WriteResult::Ok) == 2).await;
}

/// A lease whose first write never gets an answer holds the conditions back only so long,
/// and a lease task that ended holds nothing back (its supervisor fails /healthz).
#[tokio::test]
async fn a_lease_that_is_not_answered_holds_the_conditions_back_only_so_long() {
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[]).await;
    let (_answered, answers) = watch::channel(false);
    let w = Writers::start_after(client, VmiStatusMode::Off, lease::first_outcome(answers, Duration::from_millis(300)));
    w.show(verdicts_for(&["hp-a"]), observed_pods(&["hp-a"]));
    until("the write after the wait", || mock.requests().len() == 1).await;

    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[]).await;
    let (answered, answers) = watch::channel(false);
    drop(answered);
    let w = Writers::start_after(client, VmiStatusMode::Off, lease::first_outcome(answers, Duration::from_secs(3600)));
    w.show(verdicts_for(&["hp-a"]), observed_pods(&["hp-a"]));
    until("the write, the lease task gone", || mock.requests().len() == 1).await;
}

#[tokio::test]
async fn a_pod_that_already_says_it_is_not_written() {
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[]).await;
    let w = Writers::start(client, VmiStatusMode::Off);
    let pods = ["hp-a"];
    w.show(verdicts_for(&pods), observed_pods(&pods));
    until("the write", || mock.requests().len() == 1).await;
    // The watch brings the pod back with what was written.
    let written: Vec<_> = serde_json::from_value(mock.requests()[0].body["status"]["conditions"].clone()).unwrap();
    let mut echoed = observed_pods(&pods);
    let pod = echoed.pods.get_mut("hp-a").unwrap();
    Arc::make_mut(pod).conditions = written;
    w.observed.send_replace(Arc::new(echoed));
    w.news(verdicts_for(&pods));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.requests().len(), 1, "nothing is stale: nothing written");
}

#[tokio::test]
async fn every_answer_has_its_result_and_failures_make_the_agent_unready() {
    let answers =
        [("hp-conflict", 409), ("hp-forbidden", 403), ("hp-unauthorized", 401), ("hp-error", 500), ("hp-gone", 404)];
    let paths: Vec<(String, Vec<Answer>)> =
        answers.iter().map(|(p, code)| (status_path(p), vec![Answer::Status(*code)])).collect();
    let paths: Vec<(&str, Vec<Answer>)> = paths.iter().map(|(p, a)| (p.as_str(), a.clone())).collect();
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &paths).await;
    let w = Writers::start(client, VmiStatusMode::Off);
    let pods: Vec<&str> = answers.iter().map(|(p, _)| *p).collect();
    w.show(verdicts_for(&pods), observed_pods(&pods));
    until("five answers", || mock.requests().len() >= 5).await;
    until("counted", || {
        [
            WriteResult::Conflict,
            WriteResult::Forbidden,
            WriteResult::Unauthorized,
            WriteResult::Error,
            WriteResult::NotFound,
        ]
        .into_iter()
        .all(|r| w.count(WriteKind::PodConditions, r) >= 1)
    })
    .await;
    // Four pods' conditions are stale; the deleted one is no failure.
    let why = w.health.readiness().unwrap_err();
    assert!(why.starts_with("pod_conditions writes: failing for 4 objects, e.g. pod ns1/hp-"), "{why}");
    assert_eq!(w.failing.get(), 1);

    // Each is retried (the mock now answers 200): not before a second, the per-pod rate,
    // and within the first step of the backoff schedule (1 s, jittered into its upper half
    // and floored at the rate).
    until("the retries written", || w.count(WriteKind::PodConditions, WriteResult::Ok) >= 5).await;
    for (pod, _) in answers {
        let reqs = mock.to(&status_path(pod));
        assert!(reqs.len() >= 2, "{pod}: {reqs:?}");
        let spacing = reqs[1].at - reqs[0].at;
        assert!(spacing >= Duration::from_secs(1), "{pod}: retried after {spacing:?}");
        assert!(spacing < Duration::from_secs(3), "{pod}: retried after {spacing:?}");
    }
    until("ready again", || w.health.readiness().is_ok()).await;
    assert_eq!(w.failing.get(), 0);
}

#[tokio::test]
async fn a_server_that_does_not_answer_holds_up_no_other_pod() {
    let slow = status_path("hp-slow");
    let (mock, client) = Mock::start(Answer::Ok(pod_object("any")), &[(&slow, vec![Answer::Hang])]).await;
    let w = Writers::start(client, VmiStatusMode::Off);
    let pods = ["hp-slow", "hp-fast"];
    w.show(verdicts_for(&pods), observed_pods(&pods));
    until("the other pod written", || w.count(WriteKind::PodConditions, WriteResult::Ok) == 1).await;
    assert_eq!(mock.to(&status_path("hp-fast")).len(), 1);
    assert_eq!(mock.to(&slow).len(), 1, "one write at a time per pod: the hung one is not doubled");
    // More news meanwhile: the fast pod's state is current, the slow pod's write still
    // under way; nothing else is sent.
    w.news(verdicts_for(&pods));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.requests().len(), 2);
    // The write times out (10 s), is counted, makes the agent unready, and is retried.
    until("the timeout", || w.count(WriteKind::PodConditions, WriteResult::Timeout) == 1).await;
    let why = w.health.readiness().unwrap_err();
    assert!(why.contains("hp-slow (timeout)"), "{why}");
    // (Meanwhile the fast pod is written again now and then: no watch echoes it here.)
    until("the retry", || mock.to(&slow).len() == 2).await;
    until("ready again", || w.health.readiness().is_ok()).await;
}

/// A VMI whose launcher `L` has `disk1` on a device that vanished under it.
fn vanished_disk1() -> (Verdicts, Observed, Value) {
    let mut inv = Inventory::default();
    let d = DevNum::new(7, 1);
    inv.apply(Observation::FullScan(FullScan {
        seq: 1,
        pods: BTreeMap::from([
            ("L".into(), PodDisks::Launcher(BTreeMap::from([("disk1".into(), LauncherEntry::Block(d))]))),
            ("A".into(), PodDisks::Attachment(BTreeMap::from([("disk1".into(), d)]))),
        ]),
        ..Default::default()
    }));
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": NS, "uid": "V1"},
        "status": {"volumeStatus": [{"name": "rootdisk", "phase": "Ready"}, {"name": "disk1", "phase": "Ready", "reason": "VolumeReady"}]}});
    let mut view = ClusterView::default();
    view.vmis.insert("L".into(), VmiRef { namespace: NS.into(), name: "vm1".into(), uid: "V1".into() });
    let watched = WatchedVmi {
        meta: VmiMeta { uid: "V1".into(), name: "vm1".into(), namespace: NS.into(), ..Default::default() },
        volume_status: entries(&vmi),
    };
    let observed = Observed {
        view: Arc::new(view),
        pods: imbl::OrdMap::new(),
        vmis: imbl::OrdMap::unit("V1".into(), Arc::new(watched)),
    };
    (judge(&inv), observed, vmi)
}

const VMI_PATH: &str = "/apis/kubevirt.io/v1/namespaces/ns1/virtualmachineinstances/vm1";

#[tokio::test]
async fn a_vmi_write_that_lands_is_ok_and_one_put_back_stops_auto_mode() {
    let (verdicts, observed, vmi) = vanished_disk1();
    let mut landed = vmi.clone();
    landed["status"]["volumeStatus"][1]["reason"] = json!("HotplugDeviceVanished");

    // Lands: counted ok, guarded by tests on the entry's name and phase, phase untouched.
    let (mock, client) = Mock::start(Answer::Ok(landed), &[]).await;
    let w = Writers::start(client, VmiStatusMode::Auto);
    w.show(verdicts.clone(), observed.clone());
    until("the write", || w.count(WriteKind::VmiVolumeStatus, WriteResult::Ok) == 1).await;
    let reqs = mock.to(VMI_PATH);
    assert_eq!(reqs.len(), 1);
    let ops = reqs[0].body.as_array().unwrap();
    assert_eq!(ops[0], json!({"op": "test", "path": "/status/volumeStatus/1/name", "value": "disk1"}));
    assert_eq!(ops[1], json!({"op": "test", "path": "/status/volumeStatus/1/phase", "value": "Ready"}));
    assert!(ops.iter().all(|op| op["op"] == "test" || !op["path"].as_str().unwrap().ends_with("/phase")));

    // Put back (the server answers with the entry as it was): counted reverted, a Warning
    // Event, and auto mode writes no more.
    let (mock, client) = Mock::start(Answer::Ok(vmi), &[]).await;
    let mut w = Writers::start(client, VmiStatusMode::Auto);
    w.show(verdicts.clone(), observed.clone());
    until("the revert", || w.count(WriteKind::VmiVolumeStatus, WriteResult::Reverted) == 1).await;
    let event = w.events.recv().await.unwrap();
    assert_eq!((event.reason, event.warning, event.vmi.name.as_str()), (STATUS_WRITE_REJECTED, true, "vm1"));
    w.show(verdicts, observed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mock.to(VMI_PATH).len(), 1, "auto mode does not fight");
    assert_eq!(w.health.readiness(), Ok(()), "VMI status writes never make the agent unready");
}
