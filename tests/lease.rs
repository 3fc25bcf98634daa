//! The agent's Lease on a real kube-apiserver + etcd, with exactly the permissions of
//! `deploy/` (the agent impersonates its ServiceAccount on its node): created at start
//! with the contract's fields, renewed, left to run out when the agent is killed or
//! stopped, refused for any other node, and a refused write makes the agent not ready
//! until it is allowed again. Short timings (`--lease-renew-interval 1s --lease-duration
//! 3s`) keep the tests quick; the defaults are checked by the unit tests and measured in
//! `tests/cluster_mode.rs`.

mod support;

use std::time::{Duration, Instant};

use hotplug_watchdog::cluster::lease::is_alive;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::control_plane::ControlPlane;
use support::kubevirt::NODE;
use support::*;

const LEASE_NS: &str = "hotplug-watchdog";
const SHORT: [&str; 4] = ["--lease-renew-interval", "1s", "--lease-duration", "3s"];

fn lease_name(node: &str) -> String {
    format!("hotplug-watchdog-{node}")
}

fn leases(cp: &ControlPlane) -> Api<Lease> {
    Api::namespaced(cp.admin.clone(), LEASE_NS)
}

fn get_lease(cp: &ControlPlane, node: &str) -> Option<Lease> {
    cp.rt.block_on(leases(cp).get_opt(&lease_name(node))).unwrap()
}

fn renew_time(lease: &Lease) -> Timestamp {
    lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).expect("spec.renewTime").0
}

fn acquire_time(lease: &Lease) -> Timestamp {
    lease.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).expect("spec.acquireTime").0
}

fn holder(lease: &Lease) -> String {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).expect("spec.holderIdentity")
}

/// Polls the API server until `cond` holds for the node's lease; returns that lease.
fn wait_lease(cp: &ControlPlane, what: &str, timeout: Duration, cond: impl Fn(&Lease) -> bool) -> Lease {
    let deadline = Instant::now() + timeout;
    loop {
        let lease = get_lease(cp, NODE);
        if let Some(l) = lease.as_ref().filter(|l| cond(l)) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the lease: {what}; last: {lease:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one exact series of the metrics text; panics when the series is missing
/// (a missing series is a bug here, not a zero).
fn series(metrics: &str, name: &str) -> f64 {
    let mut found = metrics.lines().filter_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')));
    let value = found.next().unwrap_or_else(|| panic!("no series {name} in:\n{metrics}"));
    assert!(found.next().is_none(), "{name} twice");
    value.trim().parse().unwrap()
}

fn lease_writes(metrics: &str, result: &str) -> f64 {
    series(metrics, &format!("hotplug_watchdog_status_writes_total{{kind=\"lease\",result=\"{result}\"}}"))
}

fn writes_failing(metrics: &str, kind: &str) -> f64 {
    series(metrics, &format!("hotplug_watchdog_status_writes_failing{{kind=\"{kind}\"}}"))
}

#[test]
fn the_lease_is_created_renewed_and_runs_out_after_the_agent_dies() {
    if !require_root("the_lease_is_created_renewed_and_runs_out_after_the_agent_dies") {
        return;
    }
    let cp = ControlPlane::start();
    let tree = KubeletTree::new();
    assert!(get_lease(&cp, NODE).is_none(), "no lease before the agent");
    let mut args = SHORT.to_vec();
    args.extend(["--pod-name", "hotplug-watchdog-abcde"]);
    let started = Timestamp::now();
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &args);
    agent.wait_ready();

    // Created at start, with every field of the contract.
    let first = wait_lease(&cp, "created", Duration::from_secs(20), |_| true);
    let spec = first.spec.clone().unwrap();
    assert_eq!(first.metadata.namespace.as_deref(), Some(LEASE_NS));
    assert_eq!(spec.holder_identity.as_deref(), Some("node-1/hotplug-watchdog-abcde"));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    let acquired = acquire_time(&first);
    assert!(acquired >= started && acquired <= renew_time(&first), "acquireTime {acquired} within the run");
    assert!(is_alive(&first, Timestamp::now()), "alive: {first:?}");
    // A first start: the renewal found no lease (404), then the create.
    let m = agent.metrics();
    assert_eq!(lease_writes(&m, "not_found"), 1.0, "{m}");
    assert!(lease_writes(&m, "ok") >= 1.0, "{m}");
    assert_eq!(lease_writes(&m, "forbidden"), 0.0);
    assert_eq!(writes_failing(&m, "lease"), 0.0);

    // Renewed: renewTime advances across two intervals, one interval apart; nothing else moves.
    let t0 = renew_time(&wait_lease(&cp, "a renewal", Duration::from_secs(10), |l| renew_time(l) > renew_time(&first)));
    let t1 = renew_time(&wait_lease(&cp, "another renewal", Duration::from_secs(10), |l| renew_time(l) > t0));
    let t2 = renew_time(&wait_lease(&cp, "a third renewal", Duration::from_secs(10), |l| renew_time(l) > t1));
    for (a, b) in [(t0, t1), (t1, t2)] {
        let gap = b.duration_since(a);
        assert!(gap >= SignedDuration::from_millis(990), "renewals {gap:?} apart, interval 1 s");
    }
    let renewed = get_lease(&cp, NODE).unwrap();
    assert_eq!(acquire_time(&renewed), acquired, "acquireTime stays");
    assert_eq!(holder(&renewed), "node-1/hotplug-watchdog-abcde");
    assert!(is_alive(&renewed, Timestamp::now()));

    // SIGKILL: renewTime stops; the lease stays, alive until its duration has passed.
    drop(agent);
    let last = renew_time(&get_lease(&cp, NODE).unwrap());
    assert!(is_alive(&get_lease(&cp, NODE).unwrap(), Timestamp::now()), "not dead at once: it runs out");
    std::thread::sleep(Duration::from_millis(2500));
    let after = get_lease(&cp, NODE).expect("a killed agent leaves its lease");
    assert_eq!(renew_time(&after), last, "no renewal after the kill");
    let expiry = last.checked_add(SignedDuration::from_secs(3)).unwrap();
    while Timestamp::now() <= expiry {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_alive(&after, Timestamp::now()), "renewTime {last} + 3 s has passed: expired");

    // The next agent on the node (a new pod) claims the same lease with one renewal (no
    // 404 this time): new holder, new acquireTime.
    let restarted = Timestamp::now();
    let mut args = SHORT.to_vec();
    args.extend(["--pod-name", "hotplug-watchdog-fghij"]);
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &args);
    agent.wait_ready();
    let claimed = wait_lease(&cp, "claimed by the new pod", Duration::from_secs(20), |l| {
        holder(l) == "node-1/hotplug-watchdog-fghij"
    });
    assert!(acquire_time(&claimed) >= restarted, "acquireTime moves to the new holder");
    assert!(is_alive(&claimed, Timestamp::now()));
    let m = agent.metrics();
    assert_eq!(lease_writes(&m, "not_found"), 0.0, "the lease was there: {m}");

    // SIGTERM: a clean exit that leaves the lease to run out too (not deleted).
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let left = get_lease(&cp, NODE).expect("SIGTERM does not delete the lease");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(renew_time(&get_lease(&cp, NODE).unwrap()), renew_time(&left), "no renewal after SIGTERM");
}

#[test]
fn a_refused_lease_write_makes_the_agent_unready_until_it_is_allowed_again() {
    if !require_root("a_refused_lease_write_makes_the_agent_unready_until_it_is_allowed_again") {
        return;
    }
    let cp = ControlPlane::start();
    let tree = KubeletTree::new();
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &SHORT);
    agent.wait_ready();
    wait_lease(&cp, "created", Duration::from_secs(20), |_| true);
    let m = agent.metrics();
    assert_eq!(lease_writes(&m, "forbidden"), 0.0);
    assert_eq!(writes_failing(&m, "lease"), 0.0);

    // Someone takes the lease's RoleBinding away: every renewal is now 403.
    let bindings: Api<RoleBinding> = Api::namespaced(cp.admin.clone(), LEASE_NS);
    let saved = cp.rt.block_on(bindings.get("hotplug-watchdog-lease")).unwrap();
    cp.rt.block_on(bindings.delete("hotplug-watchdog-lease", &DeleteParams::default())).unwrap();
    let deleted = Instant::now();
    agent.wait_until("not ready, naming the lease", Duration::from_secs(20), |a| {
        let (status, body) = a.get("/readyz");
        status == 503 && body.contains("lease writes: failing") && body.contains("(forbidden)")
    });
    let m = agent.metrics();
    assert!(lease_writes(&m, "forbidden") >= 1.0, "{m}");
    assert_eq!(writes_failing(&m, "lease"), 1.0);
    assert_eq!(series(&m, "hotplug_watchdog_ready"), 0.0);
    assert_eq!(agent.get("/healthz").0, 200, "alive: only the lease is refused");
    assert!(agent.log().contains("cannot write this node's lease"), "said in the log");
    // Refused writes renew nothing: consumers see the lease run out.
    let stale = get_lease(&cp, NODE).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let still = get_lease(&cp, NODE).unwrap();
    assert_eq!(renew_time(&still), renew_time(&stale), "not renewed while refused");
    assert!(!is_alive(&still, Timestamp::now()), "runs out while refused");
    // Retries back off (1 s, 2 s, ... at most the interval), not a busy loop.
    let tries = lease_writes(&agent.metrics(), "forbidden");
    assert!(tries <= 2.0 + deleted.elapsed().as_secs_f64() * 1.5, "{tries} refused writes in {:?}", deleted.elapsed());

    // The binding comes back: renewed and ready again, without a restart.
    let mut restored = saved;
    restored.metadata.resource_version = None;
    restored.metadata.uid = None;
    cp.rt.block_on(bindings.create(&PostParams::default(), &restored)).unwrap();
    agent.wait_until("ready again", Duration::from_secs(20), |a| a.get("/readyz").0 == 200);
    let renewed = wait_lease(&cp, "renewed again", Duration::from_secs(10), |l| renew_time(l) > renew_time(&still));
    assert!(is_alive(&renewed, Timestamp::now()));
    let m = agent.metrics();
    assert_eq!(writes_failing(&m, "lease"), 0.0);
    assert_eq!(series(&m, "hotplug_watchdog_ready"), 1.0);
    assert!(agent.log().contains("lease written again"), "said in the log");
}

#[test]
fn an_agent_on_the_wrong_node_is_refused_its_lease_by_admission() {
    if !require_root("an_agent_on_the_wrong_node_is_refused_its_lease_by_admission") {
        return;
    }
    let cp = ControlPlane::start();
    let tree = KubeletTree::new();
    // Credentials bound to node-1, but told it runs on node-2: it would write node-2's lease.
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), "node-2", &SHORT);
    agent.wait_until("refused by the admission policy", Duration::from_secs(30), |a| {
        let (status, body) = a.get("/readyz");
        status == 503 && body.contains("lease writes: failing") && body.contains("own node")
    });
    let (_, body) = agent.get("/readyz");
    for other in ["node:", "pod watch", "VMI watch", "pod_conditions"] {
        assert!(!body.contains(other), "only the lease is in the way: {body}");
    }
    assert!(body.contains("ValidatingAdmissionPolicy 'hotplug-watchdog-lease-restriction'"), "{body}");
    let m = agent.metrics();
    assert!(lease_writes(&m, "forbidden") >= 1.0, "the policy's refusal is a 403: {m}");
    assert_eq!(lease_writes(&m, "ok"), 0.0);
    assert_eq!(writes_failing(&m, "lease"), 1.0);
    assert!(cp.rt.block_on(leases(&cp).get_opt(&lease_name("node-2"))).unwrap().is_none());
}

#[test]
fn the_agent_may_write_only_its_own_nodes_lease() {
    let cp = ControlPlane::start();
    let agent = cp.agent_client(NODE);
    let ours: Api<Lease> = Api::namespaced(agent.clone(), LEASE_NS);
    let lease = |node: &str, holder: &str| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": lease_name(node), "namespace": LEASE_NS},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40, "renewTime": "2026-11-30T10:00:00.000000Z"}
        }))
        .unwrap()
    };
    let refused = |r: Result<Lease, kube::Error>, why: &str| -> String {
        match r {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403, "{why}: {s:?}");
                s.message
            }
            Ok(_) => panic!("{why}: allowed"),
            Err(e) => panic!("{why}: {e}"),
        }
    };
    let pp = PostParams::default();
    let renew = Patch::Merge(json!({"spec": {"renewTime": "2026-11-30T10:00:10.000000Z"}}));
    cp.rt.block_on(async {
        // Its own: create and renew.
        ours.create(&pp, &lease(NODE, "node-1/p")).await.expect("its own node's lease: allowed");
        ours.patch(&lease_name(NODE), &PatchParams::default(), &renew).await.expect("renewing it: allowed");

        // Another node's: neither create nor renew.
        let msg = refused(ours.create(&pp, &lease("node-2", "node-1/p")).await, "another node's lease");
        assert!(msg.contains("own node"), "{msg}");
        leases(&cp).create(&pp, &lease("node-2", "node-2/q")).await.unwrap();
        let msg = refused(
            ours.patch(&lease_name("node-2"), &PatchParams::default(), &renew).await,
            "renewing another node's lease",
        );
        assert!(msg.contains("own node"), "{msg}");
        // Its own, but held for another node.
        let steal = Patch::Merge(json!({"spec": {"holderIdentity": "node-2/q"}}));
        let msg = refused(ours.patch(&lease_name(NODE), &PatchParams::default(), &steal).await, "a foreign holder");
        assert!(msg.contains("holderIdentity"), "{msg}");
        // Not delete (its lease runs out instead), not read, not in another namespace.
        let r = ours.delete(&lease_name(NODE), &DeleteParams::default()).await.map(|_| lease(NODE, ""));
        refused(r, "delete");
        refused(ours.get(&lease_name(NODE)).await, "get is not needed, not granted");
        let elsewhere: Api<Lease> = Api::namespaced(agent.clone(), "kube-system");
        refused(elsewhere.create(&pp, &lease(NODE, "node-1/p")).await, "another namespace");
        let other = leases(&cp).get(&lease_name("node-2")).await.unwrap();
        assert_eq!(holder(&other), "node-2/q", "untouched");
    });

    // Credentials without the node-name extra get no lease at all.
    let api: Api<Lease> = Api::namespaced(cp.agent_client_without_node(), LEASE_NS);
    cp.rt.block_on(async {
        let msg = refused(api.patch(&lease_name(NODE), &PatchParams::default(), &renew).await, "no node");
        assert!(msg.contains("own node"), "{msg}");
    });
}

#[test]
fn bad_lease_settings_stop_the_agent_at_start_with_one_line() {
    let tree = KubeletTree::new();
    let long_node = "n".repeat(237);
    for (args, expected) in [
        (vec!["--node-name", long_node.as_str()], "is not a valid object name"),
        (vec!["--node-name", "node-1", "--lease-renew-interval", "20s"], "less than half of --lease-duration"),
        (vec!["--node-name", "node-1", "--lease-renew-interval", "21s", "--lease-duration", "60s"], "longer than 20s"),
        (vec!["--node-name", "node-1", "--lease-duration", "61s"], "longer than 60s"),
        (vec!["--node-name", "node-1", "--lease-duration", "2500ms"], "not whole seconds"),
        (vec!["--node-name", "node-1", "--lease-namespace", "Not_A_Namespace"], "not a namespace name"),
    ] {
        let out = std::process::Command::new(agent_binary())
            .env_remove("NODE_NAME")
            .args(["run", "--listen", "127.0.0.1:0", "--kubelet-root"])
            .arg(&tree.root)
            .args(["--kubeconfig", "/nonexistent/kubeconfig"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
