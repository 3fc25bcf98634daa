//! The handoff hold measured (issue #14): how soon the API server lets KubeVirt's delete of
//! an old attachment pod through once the handoff is safe, and what a held pod costs while
//! KubeVirt keeps retrying. A program, not a test: it prints figures and asserts nothing
//! about time.
//!
//!   sudo scripts/bench hold                              # what BENCHMARKS.md reports
//!   cargo bench --bench handoff_hold -- --runs 5 --hold-minutes 3     # a quick look
//!
//! Everything is real but KubeVirt: a kube-apiserver + etcd with deploy/handoff-hold-policy.yaml
//! installed, the agent binary (release build) in cluster mode on a temp kubelet tree, loop
//! devices through /dev/loop-control. KubeVirt's controller is support/controller.rs, an
//! imitation of v1.9.0's attachment-pod cleanup that deletes as KubeVirt does (its
//! ServiceAccount, by name, grace period 0) and retries a refused delete as v1.9.0 does
//! (client-go's rate limiter, 5 ms doubling to 1000 s, and at once on a change to the VMI
//! or its pods; a FailedDelete Event through an imitation of client-go's recorder). The
//! figures are the imitation's; the real controller's are issue #15.
//!
//! 1. release latency, `--runs` times (default 50), each on a fresh VM: its hotplugged disk1
//!    comes from attachment pod A (the agent says False, SoleBacker: A alone serves it); a
//!    second volume is hotplugged, the new pod B gets the same device for disk1 (kernel rbd)
//!    and runs; the controller tries to delete A. Timed from B's device appearing on the node
//!    to the controller's DELETE going through. A's condition was written more than a
//!    second before (as in a cluster, where it was written long before the next hotplug;
//!    the agent writes a pod's conditions at most once a second).
//! 2. a held pod, for `--hold-minutes` (default 40): B gets a device of its own for disk1
//!    (nbd); every DELETE is refused. DELETE attempts, Event API writes and Events dropped by
//!    the recorder's spam filter, per minute.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::control_plane::ControlPlane;
use support::controller::{self, Cleanup, KubeVirtController};
use support::kubevirt::*;
use support::{volume_state, Agent, KubeletTree, LoopDevice};

struct Options {
    runs: usize,
    hold_minutes: u64,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options { runs: 50, hold_minutes: 40 };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = value().parse().expect("--runs N"),
                "--hold-minutes" => o.hold_minutes = value().parse().expect("--hold-minutes N"),
                "--bench" => {} // cargo bench passes it
                other => panic!("unknown option {other} (--runs N, --hold-minutes N)"),
            }
        }
        o
    }
}

/// A VM in namespace `ns` whose disk1 comes from attachment pod `hp-volume-aaaaa` on a loop
/// device, and the second hotplug: `hp-volume-bbbbb` with disk1 (the same device when
/// `shared`) and disk2. Returns the devices (to keep them) and when B's devices appeared.
struct Vm {
    vm: HotplugVm,
    devices: Vec<LoopDevice>,
}

const OLD: &str = "hp-volume-aaaaa";
const NEW: &str = "hp-volume-bbbbb";

fn vm_with_disk1(cp: &ControlPlane, tree: &KubeletTree, agent: &Agent, ns: &str) -> Vm {
    let vm = create_hotplug_vm(cp, ns, "vm1", NODE, &["disk1"]);
    let launcher = (vm.launcher.as_str(), vm.launcher_uid.as_str());
    let uid = cp.rt.block_on(create_hp_pod(cp, &vm, launcher, OLD, NODE, &["disk1"], json!({})));
    let d0 = LoopDevice::add();
    tree.hotplugged(&vm.launcher_uid, &uid, "disk1", d0.dev());
    set_pod_phase(cp, ns, OLD, "Running");
    set_volume_status(cp, &vm, &[("disk1", "Ready", OLD, &uid)]);
    agent.wait_until("disk1 ready, the old pod False", Duration::from_secs(30), |a| {
        volume_state(&a.report(), &vm.launcher_uid, "disk1").as_deref() == Some("ready")
            && handoff_condition(cp, ns, OLD).is_some_and(|(s, _)| s == "False")
    });
    std::thread::sleep(Duration::from_millis(1200));
    Vm { vm, devices: vec![d0] }
}

fn hotplug_disk2(cp: &ControlPlane, tree: &KubeletTree, v: &mut Vm, shared: bool) -> Instant {
    let h = support::kubevirt::hotplug_disk2(cp, tree, &v.vm, NEW, v.devices[0].dev(), shared);
    v.devices.extend(h.disk1_new);
    v.devices.push(h.disk2);
    h.appeared
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn main() {
    let o = Options::parse();
    if !support::require_root("handoff hold benchmark") {
        std::process::exit(1);
    }
    let cp = ControlPlane::start();
    controller::install_hold_policy(&cp);
    let tree = KubeletTree::new();
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
    agent.wait_ready();
    let mut vms = Vec::new();

    // 1. release latency
    eprintln!("release latency: {} runs", o.runs);
    let mut latencies = Vec::new();
    let mut refused = Vec::new();
    for i in 0..o.runs {
        let ns = format!("release-{i}");
        let mut v = vm_with_disk1(&cp, &tree, &agent, &ns);
        let ctl = KubeVirtController::start(&cp, &ns, "vm1", Cleanup::V190);
        let appeared = hotplug_disk2(&cp, &tree, &mut v, true);
        ctl.wait_until("the old pod deleted", Duration::from_secs(60), |s| s.deleted(OLD).is_some());
        let s = ctl.stop(&cp);
        let ms = s.deleted(OLD).unwrap().duration_since(appeared).as_secs_f64() * 1e3;
        let n = s.refusals().len();
        eprintln!("  run {:>2}: {ms:7.1} ms, {n} DELETE(s) refused before", i + 1);
        latencies.push(ms);
        refused.push(n);
        vms.push(v);
    }
    latencies.sort_by(f64::total_cmp);
    let refusals_total: usize = refused.iter().sum();
    println!(
        "release latency (new pod's device on the node -> KubeVirt's DELETE of the old pod allowed), {} runs:",
        o.runs
    );
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies[0],
        latencies[latencies.len() - 1]
    );
    println!(
        "  DELETEs refused before the release: {refusals_total} in all; runs with none: {}, with one or more: {}",
        refused.iter().filter(|n| **n == 0).count(),
        refused.iter().filter(|n| **n > 0).count()
    );

    // 2. a held pod
    if o.hold_minutes == 0 {
        return;
    }
    eprintln!("a held pod: {} minutes", o.hold_minutes);
    let ns = "held";
    let mut v = vm_with_disk1(&cp, &tree, &agent, ns);
    let ctl = KubeVirtController::start(&cp, ns, "vm1", Cleanup::V190);
    let start = Instant::now();
    hotplug_disk2(&cp, &tree, &mut v, false);
    let window = Duration::from_secs(o.hold_minutes * 60);
    let mut said = 0;
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        let m = start.elapsed().as_secs() / 60;
        if m > said {
            said = m;
            let s = ctl.stats();
            eprintln!("  {m:>3} min: {} DELETEs, {} Event writes", s.attempts.len(), s.event_writes);
        }
    }
    let s = ctl.stop(&cp);
    assert!(pod_exists(&cp, ns, OLD), "the held pod went: {s:#?}");
    assert_eq!(s.deleted(OLD), None);
    let minute = |t: Instant| (t.saturating_duration_since(start).as_secs() / 60) as usize;
    let mut attempts = vec![0; o.hold_minutes as usize + 1];
    let mut events = vec![0; o.hold_minutes as usize + 1];
    for a in &s.attempts {
        attempts[minute(a.at).min(o.hold_minutes as usize)] += 1;
    }
    for t in &s.event_write_times {
        events[minute(*t).min(o.hold_minutes as usize)] += 1;
    }
    let times: Vec<String> =
        s.attempts.iter().map(|a| format!("{:.1}", a.at.duration_since(start).as_secs_f64())).collect();
    println!(
        "a held pod ({} minutes, a new device per pod; the agent alive, its condition False throughout):",
        o.hold_minutes
    );
    println!("  DELETE attempts: {} in all, all refused: {}", s.attempts.len(), s.refusals().len() == s.attempts.len());
    println!("  their times (s from the new pod running): {}", times.join(" "));
    println!(
        "  Events: {} FailedDelete counted, {} Event API writes (1 create, the rest count patches), {} dropped by the spam filter",
        s.events.values().sum::<u32>(),
        s.event_writes,
        s.events_dropped
    );
    println!("  VMI writes (its Synchronized condition): {}", s.vmi_writes);
    println!("  minute  DELETEs  Event writes");
    for m in 0..o.hold_minutes as usize {
        if attempts[m] > 0 || events[m] > 0 || m < 3 {
            println!("  {:>6}  {:>7}  {:>12}", m + 1, attempts[m], events[m]);
        }
    }
    println!("  (minutes not listed: none of either)");
    drop(vms);
}
