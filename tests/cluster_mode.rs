//! Cluster mode against a real kube-apiserver + etcd, with real loop devices in a temp
//! kubelet tree named by the UIDs of pods created through the API (they stay Pending:
//! there is no kubelet). The agent runs with exactly the permissions of `deploy/`
//! (impersonating its ServiceAccount).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use support::control_plane::ControlPlane;
use support::kubevirt::*;
use support::*;

fn entry(agent: &Agent, launcher: &str, volume: &str) -> serde_json::Value {
    volume_entry(&agent.report(), launcher, volume).cloned().unwrap_or(serde_json::Value::Null)
}

#[test]
fn names_events_and_unplugs_on_a_real_control_plane() {
    if !require_root("names_events_and_unplugs_on_a_real_control_plane") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["rootdisk", "disk1", "disk2"]);
    let tree = KubeletTree::new();
    let mut disk1 = LoopDevice::add();
    let mut disk2 = LoopDevice::add();
    tree.launcher(&vm.launcher_uid);
    tree.attachment(&vm.attachment_uid);
    for (name, dev) in [("disk1", disk1.dev()), ("disk2", disk2.dev())] {
        tree.attach_block(&vm.attachment_uid, name, dev);
        tree.launcher_block(&vm.launcher_uid, name, dev);
    }
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    agent.wait_ready();
    agent.wait_until("names from the API", Duration::from_secs(20), |a| {
        entry(a, &vm.launcher_uid, "disk1")["vmi"] == "vm1"
    });
    let v = entry(&agent, &vm.launcher_uid, "disk1");
    assert_eq!(v["state"], "ready");
    assert_eq!(v["namespace"], NS);
    assert_eq!(v["pod"], "virt-launcher-vm1-abcde");
    assert_eq!(v["in_spec"], true);
    let report = agent.report();
    let att = report["attachment_pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_uid"] == vm.attachment_uid.as_str())
        .unwrap()
        .clone();
    assert_eq!(att["pod"], "hp-volume-aaaaa");
    assert_eq!(att["vmi"], "vm1");
    assert_eq!(att["launcher_pod_uid"], vm.launcher_uid.as_str());

    // The one-shot scan names them too, with the agent's permissions.
    let out = std::process::Command::new(agent_binary())
        .args(["scan", "--format", "json", "--mountinfo", "/proc/self/mountinfo", "--node-name", NODE])
        .arg("--kubelet-root")
        .arg(&tree.root)
        .arg("--kubeconfig")
        .arg(cp.agent_kubeconfig(NODE))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scanned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = volume_entry(&scanned, &vm.launcher_uid, "disk1").unwrap();
    assert_eq!(
        (v["vmi"].as_str(), v["namespace"].as_str(), v["in_spec"].as_bool()),
        (Some("vm1"), Some(NS), Some(true))
    );

    // A new attachment pod with a new device for disk1 (nbd-like): the old one is the only
    // one serving the VM's device, and a Warning says deleting it now would hurt.
    let swap_dev = LoopDevice::add();
    let new_uid = cp.rt.block_on(create_attachment_pod(&cp, "hp-volume-bbbbb", &vm.launcher_uid));
    tree.attachment(&new_uid);
    tree.attach_block(&new_uid, "disk1", swap_dev.dev());
    agent.wait_until("a HotplugHandoffUnsafe Event", Duration::from_secs(20), |_| {
        !vmi_events(&cp, "HotplugHandoffUnsafe").is_empty()
    });
    let unsafe_events = vmi_events(&cp, "HotplugHandoffUnsafe");
    let note = unsafe_events[0].note.clone().unwrap();
    assert!(note.contains("attachment pod hp-volume-aaaaa is the only one serving disk1"), "{note}");
    tree.remove_pod(&new_uid);
    let labels = |vol: &str| {
        format!(
            "pod_uid=\"{}\",volume=\"{vol}\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"virt-launcher-vm1-abcde\"",
            vm.launcher_uid
        )
    };
    assert_eq!(
        metric(&agent.metrics(), &format!("hotplug_watchdog_volume_device_present{{{}}}", labels("disk1"))),
        1.0
    );

    // disk1's device vanishes under the running VM: a Warning Event on the VMI, once.
    disk1.remove();
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    agent.wait_until("a HotplugDeviceVanished Event", Duration::from_secs(20), |_| {
        !vmi_events(&cp, "HotplugDeviceVanished").is_empty()
    });
    let events = vmi_events(&cp, "HotplugDeviceVanished");
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = &events[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("hotplug-watchdog"));
    assert_eq!(ev.regarding.as_ref().unwrap().uid.as_deref(), Some(vm.vmi_uid.as_str()));
    assert!(ev.note.as_deref().unwrap().contains("disk1"), "{ev:?}");
    assert_eq!(
        metric(&agent.metrics(), &format!("hotplug_watchdog_device_vanished_total{{{}}}", labels("disk1"))),
        1.0
    );

    // disk2 leaves the spec first (an unplug), then its device goes: no alarm.
    cp.rt.block_on(async {
        let patch = json!({"spec": {"volumes": [{"name": "rootdisk"}, {"name": "disk1"}]}});
        vmi_api(&cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    agent.wait_until("disk2 out of the spec", Duration::from_secs(20), |a| {
        entry(a, &vm.launcher_uid, "disk2")["in_spec"] == false
    });
    disk2.remove();
    agent.wait_volume(&vm.launcher_uid, "disk2", Some("vanished"));
    std::thread::sleep(Duration::from_millis(500));
    let events = vmi_events(&cp, "HotplugDeviceVanished");
    assert!(
        events.iter().all(|e| !e.note.as_deref().unwrap_or("").contains("disk2")),
        "no alarm for an unplug: {events:#?}"
    );
    assert_eq!(
        metric_opt(&agent.metrics(), &format!("hotplug_watchdog_device_vanished_total{{{}}}", labels("disk2"))),
        None,
        "an unplug is never counted as a loss"
    );
    assert!(
        metric(&agent.metrics(), "hotplug_watchdog_events_total{reason=\"HotplugDeviceVanished\",result=\"sent\"}")
            >= 1.0
    );
}

#[test]
fn the_agent_role_allows_reading_and_events_only() {
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let agent = cp.agent_client(NODE);
    cp.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(agent.clone(), NS);
        assert!(pods.list(&ListParams::default()).await.is_ok(), "list pods");
        let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
        assert!(forbidden(pods.get("virt-launcher-vm1-abcde").await.map(|_| ())), "get is not needed, not granted");
        assert!(
            forbidden(pods.delete("virt-launcher-vm1-abcde", &DeleteParams::default()).await.map(|_| ())),
            "delete pods"
        );
        let patch = json!({"metadata": {"labels": {"x": "y"}}});
        assert!(
            forbidden(
                pods.patch("virt-launcher-vm1-abcde", &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            ),
            "patch pods"
        );
        let vmis: Api<DynamicObject> =
            Api::namespaced_with(agent.clone(), NS, &hotplug_watchdog::cluster::vmi_resource());
        assert!(vmis.list(&ListParams::default()).await.is_ok(), "list VMIs");
        let status = json!({"status": {"phase": "Failed"}});
        assert!(
            forbidden(vmis.patch("vm1", &PatchParams::default(), &Patch::Merge(&status)).await.map(|_| ())),
            "patch VMIs"
        );
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(agent.clone(), NS);
        assert!(forbidden(secrets.list(&ListParams::default()).await.map(|_| ())), "secrets");
    });
    let _ = vm;
}

fn readyz(agent: &Agent) -> (u16, String) {
    agent.get("/readyz")
}

/// CPU seconds the agent process used so far (utime + stime).
fn cpu_seconds(agent: &Agent) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid())).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64
}

#[test]
fn api_server_absent_at_start_then_down_then_back() {
    if !require_root("api_server_absent_at_start_then_down_then_back") {
        return;
    }
    let mut cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, mut disk) = node_with_disk1(&vm);
    let kubeconfig = cp.agent_kubeconfig(NODE);
    cp.stop_apiserver();

    // No API server: the node side works, readiness says what is missing.
    let agent = Agent::start_cluster(&tree.root, &kubeconfig, NODE, &["--rescan-interval", "1h"]);
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("ready"));
    let (status, body) = readyz(&agent);
    assert_eq!(status, 503);
    assert!(body.contains("pod watch") && body.contains("VMI watch"), "{body}");
    assert_eq!(agent.get("/healthz").0, 200);
    assert_eq!(entry(&agent, &vm.launcher_uid, "disk1")["vmi"], serde_json::Value::Null);
    let cpu = cpu_seconds(&agent);
    std::thread::sleep(Duration::from_secs(3));
    let idle_cpu = cpu_seconds(&agent) - cpu;
    println!("agent CPU while the API server is absent: {idle_cpu:.3} s over 3 s");
    assert!(idle_cpu < 1.0, "backoff, not a busy loop: {idle_cpu} s of CPU in 3 s");

    // The server arrives: the watches sync, names appear.
    cp.start_apiserver();
    agent.wait_until("ready with names", Duration::from_secs(60), |a| {
        readyz(a).0 == 200 && entry(a, &vm.launcher_uid, "disk1")["vmi"] == "vm1"
    });

    // It goes away again: node truth goes on, readiness tells.
    cp.stop_apiserver();
    disk.remove();
    agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    agent.wait_until("not ready while the watches fail", Duration::from_secs(60), |a| readyz(a).0 == 503);
    // The loss was counted while the API server was away (the only vanish of this test).
    assert_eq!(metric(&agent.metrics(), "hotplug_watchdog_volume_transitions_total{state=\"vanished\"}"), 1.0);
    assert_eq!(entry(&agent, &vm.launcher_uid, "disk1")["vmi"], "vm1", "the last view stays in force");

    cp.start_apiserver();
    agent.wait_until("ready again", Duration::from_secs(60), |a| readyz(a).0 == 200);
    assert_eq!(agent.get("/healthz").0, 200);
}

#[test]
fn deleted_and_recreated_objects_converge() {
    if !require_root("deleted_and_recreated_objects_converge") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, disk) = node_with_disk1(&vm);
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    agent.wait_until("synced", Duration::from_secs(30), |a| entry(a, &vm.launcher_uid, "disk1")["in_spec"] == true);

    // The attachment pod is replaced by one with another name and UID.
    let new_uid = cp.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
        pods.delete("hp-volume-aaaaa", &DeleteParams::default()).await.unwrap();
        create_attachment_pod(&cp, "hp-volume-bbbbb", &vm.launcher_uid).await
    });
    tree.attachment(&new_uid);
    tree.attach_block(&new_uid, "disk1", disk.dev());
    tree.remove_pod(&vm.attachment_uid);
    agent.wait_until("the new attachment pod by name", Duration::from_secs(20), |a| {
        let r = a.report();
        let pods = r["attachment_pods"].as_array().unwrap();
        pods.len() == 1 && pods[0]["pod"] == "hp-volume-bbbbb" && pods[0]["vmi"] == "vm1"
    });

    // The VMI is deleted: its spec is unknown, so nothing claims an unplug; the launcher
    // still names it through its ownerReference.
    cp.rt.block_on(async { vmi_api(&cp).delete("vm1", &DeleteParams::default()).await.unwrap() });
    agent.wait_until("spec unknown", Duration::from_secs(20), |a| {
        entry(a, &vm.launcher_uid, "disk1")["in_spec"].is_null()
    });
    assert_eq!(entry(&agent, &vm.launcher_uid, "disk1")["vmi"], "vm1");
    assert_eq!(entry(&agent, &vm.launcher_uid, "disk1")["state"], "ready");
}

/// The value of one exact series; a missing series fails the test (it is not a zero).
fn series(metrics: &str, name: &str) -> f64 {
    let value = metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')));
    value.unwrap_or_else(|| panic!("no series {name} in:\n{metrics}")).trim().parse().unwrap()
}

/// In a steady state the only API requests are the lease's renewals (a merge patch every
/// 10 s by default): no reads, no other writes. The window is 60 s, or
/// HOTPLUG_WATCHDOG_STEADY_SECONDS (BENCHMARKS.md's figure was measured over 600 s).
#[test]
fn steady_state_api_requests_are_lease_renewals_only() {
    if !require_root("steady_state_api_requests_are_lease_renewals_only") {
        return;
    }
    let window = Duration::from_secs(
        std::env::var("HOTPLUG_WATCHDOG_STEADY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60),
    );
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, _disk) = node_with_disk1(&vm);
    // Default lease timing.
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &[]);
    // Synced, and the attachment pod's conditions written once: from then on, nothing changes.
    agent.wait_until("synced and conditions written", Duration::from_secs(30), |a| {
        readyz(a).0 == 200
            && entry(a, &vm.launcher_uid, "disk1")["vmi"] == "vm1"
            && series(&a.metrics(), "hotplug_watchdog_status_writes_total{kind=\"pod_conditions\",result=\"ok\"}")
                >= 1.0
    });
    // Let the write's echo come back through the watch.
    std::thread::sleep(Duration::from_secs(1));
    let requests = |a: &Agent| {
        let m = a.metrics();
        let by_verb = hotplug_watchdog::cluster::client::Verb::ALL
            .map(|v| v.label())
            .map(|verb| (verb, series(&m, &format!("hotplug_watchdog_api_requests_total{{verb=\"{verb}\"}}"))));
        let lease: f64 = hotplug_watchdog::cluster::outcome::WriteResult::ALL
            .map(|r| r.label())
            .iter()
            .map(|r| series(&m, &format!("hotplug_watchdog_status_writes_total{{kind=\"lease\",result=\"{r}\"}}")))
            .sum();
        (by_verb, lease, series(&m, "hotplug_watchdog_status_writes_total{kind=\"lease\",result=\"ok\"}"))
    };
    let (before, lease_before, lease_ok_before) = requests(&agent);
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let (after, lease_after, lease_ok_after) = requests(&agent);
    let elapsed = started.elapsed().as_secs_f64();
    println!("API requests at sync (lists, watches, the first condition write, the lease): {before:?}");
    println!("API requests in {elapsed:.1} s of steady state:");
    for ((verb, b), (_, a)) in before.iter().zip(after.iter()) {
        println!("  {verb:<7} {}", a - b);
    }
    let renewals = lease_after - lease_before;
    println!(
        "lease renewals: {renewals} in {elapsed:.1} s = {:.0} requests per hour per node",
        renewals * 3600.0 / elapsed
    );
    assert!(before[0].1 >= 2.0, "two watches opened: {before:?}");
    // kube's watcher asks the server to end each watch after 290 s and opens it again from
    // the last resourceVersion: no list, one request. Over a longer window that is the one
    // other request.
    let watch_reopens = if elapsed < 280.0 { 0.0 } else { 2.0 * (elapsed / 290.0).ceil() };
    for ((verb, b), (_, a)) in before.iter().zip(after.iter()) {
        match *verb {
            "patch" => assert_eq!(a - b, renewals, "patch requests are the lease's renewals"),
            "watch" => assert!(a - b <= watch_reopens, "{} watches opened in {elapsed:.0} s", a - b),
            _ => assert_eq!(a - b, 0.0, "{verb} requests in a steady state"),
        }
    }
    // Every 10 s, each one written: one more or fewer at the window's edges.
    let expected = elapsed / 10.0;
    assert!((renewals - expected).abs() <= 1.0, "{renewals} renewals in {elapsed:.1} s, expected {expected:.1}");
    assert_eq!(lease_ok_after - lease_ok_before, renewals, "every renewal written");
}
