//! The hotplug race of kubevirt#6564 / #9708, played on a real API server and real loop
//! devices while the real agent watches (cluster mode). This module plays everyone else:
//! - KubeVirt's controller: support/controller.rs, an imitation of v1.9.0's attachment-pod
//!   cleanup that deletes as KubeVirt does (its ServiceAccount through impersonation, by
//!   name, grace period 0; on refusal a FailedDelete Event (the VMI's Synchronized
//!   condition only when it is not Running) and a requeue with client-go's backoff). `Rule::Today` is v1.9.0 as
//!   released; `Rule::TodayWithHold` is the same controller, unmodified, with
//!   deploy/handoff-hold-policy.yaml installed in the API server; `Rule::Gated` is v1.9.0
//!   with contrib/kubevirt's gate, whose actual rules decide through `gate-decide`. The
//!   scenario creates the new attachment pod itself (the imitation creates no pod);
//! - the kubelet and the storage driver: an attachment pod's device appears when the pod
//!   starts and is torn down when it is deleted; a new device per pod (nbd, NVMe-oF,
//!   iSCSI) or one shared device (kernel rbd);
//! - virt-handler: mknod of a new volume's device into the launcher, never re-pointing a
//!   node it made before, and the VMI's volume status.

use std::time::{Duration, Instant};

use serde_json::json;

use super::control_plane::ControlPlane;
use super::controller::{self, Cleanup, KubeVirtController, Stats};
use super::kubevirt::*;
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// KubeVirt v1.9.0: delete the old pod once the new one is Running.
    Today,
    /// KubeVirt v1.9.0, unmodified, with the API server's handoff hold (the admission
    /// policy of deploy/handoff-hold-policy.yaml) installed.
    TodayWithHold,
    /// v1.9.0 with contrib/kubevirt's cleanup gate (its rules, through gate-decide).
    Gated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices {
    /// Each attachment pod gets its own device (nbd, NVMe-oF, iSCSI).
    PerPod,
    /// Both pods expose the same device (kernel rbd, one LUN).
    Shared,
}

#[derive(Debug)]
pub struct Outcome {
    pub old_pod_deleted: bool,
    /// `hotplug_watchdog_device_vanished_total` for disk1; `None`: the series does not exist,
    /// the agent never counted a loss.
    pub vanished: Option<f64>,
    pub vanished_events: usize,
    pub disk1_state: Option<String>,
    /// What the imitated controller did: DELETE attempts, refusals, Events, gate decisions.
    pub controller: Stats,
    /// The VMI's Synchronized condition at the end: (status, reason, message).
    pub synchronized: Option<(String, String, String)>,
}

impl Outcome {
    /// DELETEs of the old pod the API server refused.
    pub fn refusals(&self) -> Vec<&controller::Attempt> {
        self.controller.refusals().into_iter().filter(|a| a.pod == OLD).collect()
    }

    /// The count of FailedDelete Events the controller recorded for the old pod.
    pub fn failed_delete_events(&self) -> u32 {
        self.controller.events.iter().filter(|((_, reason, _), _)| reason == "FailedDelete").map(|(_, n)| *n).sum()
    }
}

const OLD: &str = "hp-volume-aaaaa";
const NEW: &str = "hp-volume-bbbbb";

struct Timeline {
    start: Instant,
    verbose: bool,
}

impl Timeline {
    fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1e3
    }

    fn say(&self, who: &str, what: impl AsRef<str>) {
        self.say_at(Instant::now(), who, what)
    }

    fn say_at(&self, t: Instant, who: &str, what: impl AsRef<str>) {
        if self.verbose {
            println!("{:>8.0} ms  {who:<15} {}", self.at(t), what.as_ref());
        }
    }
}

fn synchronized(cp: &ControlPlane, vm: &HotplugVm) -> Option<(String, String, String)> {
    cp.rt.block_on(async {
        let vmi = vmi_api_in(cp, &vm.ns).get(&vm.name).await.ok()?;
        let conditions = vmi.data["status"]["conditions"].as_array()?.clone();
        let c = conditions.into_iter().find(|c| c["type"] == "Synchronized")?;
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        Some((s("status"), s("reason"), s("message")))
    })
}

/// Plays one hotplug of a second volume. `hold` bounds how long the scenario waits for the
/// controller to delete the old pod (a held pod is held far longer).
pub fn play(rule: Rule, devices: Devices, hold: Duration, verbose: bool) -> Outcome {
    let t = Timeline { start: Instant::now(), verbose };
    let cp = ControlPlane::start();
    t.say("setup", "kube-apiserver and etcd running, KubeVirt VMI CRD installed");
    match rule {
        Rule::TodayWithHold => {
            controller::install_hold_policy(&cp);
            t.say(
                "setup",
                "admission policy hotplug-watchdog-handoff-hold installed (deploy/handoff-hold-policy.yaml)",
            );
        }
        Rule::Gated => {
            controller::grant_identities(&cp);
            cp.rt.block_on(cp.apply("contrib/kubevirt/deploy/virt-controller-lease-reader.yaml"));
        }
        Rule::Today => controller::grant_identities(&cp),
    }
    let vm = create_hotplug_vm(&cp, NS, "vm1", NODE, &["disk1"]);
    let launcher = (vm.launcher.as_str(), vm.launcher_uid.as_str());
    let old_uid = cp.rt.block_on(create_hp_pod(&cp, &vm, launcher, OLD, NODE, &["disk1"], json!({})));
    let tree = KubeletTree::new();
    let mut old_dev = LoopDevice::add();
    tree.hotplugged(&vm.launcher_uid, &old_uid, "disk1", old_dev.dev());
    set_pod_phase(&cp, NS, OLD, "Running");
    set_volume_status(&cp, &vm, &[("disk1", "Ready", OLD, &old_uid)]);
    t.say("setup", format!("VM vm1 uses hotplugged disk1 = {} from {OLD}", old_dev.dev()));

    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
    agent.wait_until("the agent sees vm1 and its attachment pod", Duration::from_secs(30), |a| {
        volume_entry(&a.report(), &vm.launcher_uid, "disk1").is_some_and(|v| v["state"] == "ready" && v["vmi"] == "vm1")
            && handoff_condition(&cp, NS, OLD).is_some()
    });
    let (status, reason) = handoff_condition(&cp, NS, OLD).unwrap();
    t.say("agent", format!("disk1 ready; {OLD}: HandoffSafe {status} ({reason}), the lone pod serving disk1"));

    let cleanup = if rule == Rule::Gated { Cleanup::Gated } else { Cleanup::V190 };
    let ctl = KubeVirtController::start(&cp, NS, "vm1", cleanup);
    t.say(
        "controller",
        format!(
            "running as {} ({})",
            controller::CONTROLLER_USER,
            match rule {
                Rule::Today => "KubeVirt v1.9.0's cleanup rule",
                Rule::TodayWithHold => "KubeVirt v1.9.0's cleanup rule, unmodified",
                Rule::Gated => "v1.9.0 with the cleanup gate: gate-decide decides",
            }
        ),
    );

    // The user hotplugs disk2: the controller makes a new pod holding both volumes.
    patch_vmi(
        &cp,
        &vm,
        json!({"spec": {"volumes": [
            {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
            {"name": "disk1", "persistentVolumeClaim": {"claimName": "pvc-disk1", "hotpluggable": true}},
            {"name": "disk2", "persistentVolumeClaim": {"claimName": "pvc-disk2", "hotpluggable": true}}]}}),
    );
    let new_uid = cp.rt.block_on(create_hp_pod(&cp, &vm, launcher, NEW, NODE, &["disk1", "disk2"], json!({})));
    t.say("controller", format!("disk2 added to the spec: created {NEW} holding disk1 and disk2"));
    let disk1_new = match devices {
        Devices::PerPod => Some(LoopDevice::add()),
        Devices::Shared => None,
    };
    let disk2_dev = LoopDevice::add();
    let disk1_in_new = disk1_new.as_ref().map_or(old_dev.dev(), |d| d.dev());
    tree.attachment(&new_uid);
    tree.attach_block(&new_uid, "disk1", disk1_in_new);
    tree.attach_block(&new_uid, "disk2", disk2_dev.dev());
    let devices_appeared = Instant::now();
    set_pod_phase(&cp, NS, NEW, "Running");
    t.say("kubelet", format!("{NEW} Running: disk1 = {disk1_in_new}, disk2 = {}", disk2_dev.dev()));
    tree.launcher_block(&vm.launcher_uid, "disk2", disk2_dev.dev());
    set_volume_status(&cp, &vm, &[("disk1", "Ready", NEW, &new_uid), ("disk2", "Ready", NEW, &new_uid)]);
    t.say("virt-handler", "mknod disk2 into the launcher; disk1's node stays as it is; volumes Ready");

    // The controller deletes the old pod, or does not, within `hold`.
    let deadline = Instant::now() + hold;
    while Instant::now() < deadline && ctl.stats().deleted(OLD).is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = ctl.stop(&cp);
    let deleted = stats.deleted(OLD);
    report_controller(&t, &stats, devices_appeared);
    if deleted.is_some() {
        tree.remove_pod(&old_uid);
        if devices == Devices::PerPod {
            old_dev.remove();
            t.say("storage driver", format!("{OLD} gone: tore down its device {}", old_dev.dev()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    if deleted.is_some() && devices == Devices::PerPod {
        agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    }
    let disk1_state = volume_state(&agent.report(), &vm.launcher_uid, "disk1");
    t.say("agent", format!("disk1 is {}", disk1_state.as_deref().unwrap_or("?")));
    let series = format!(
        "hotplug_watchdog_device_vanished_total{{pod_uid=\"{}\",volume=\"disk1\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"{}\"}}",
        vm.launcher_uid, vm.launcher
    );
    let vanished = metric_opt(&agent.metrics(), &series);
    if vanished.is_some() {
        agent.wait_until("the Warning Event", Duration::from_secs(20), |_| {
            !vmi_events(&cp, "HotplugDeviceVanished").is_empty()
        });
    }
    let vanished_events = vmi_events(&cp, "HotplugDeviceVanished").len();
    t.say(
        "result",
        format!("vanished devices: {}, HotplugDeviceVanished Events: {vanished_events}", vanished.unwrap_or_default()),
    );
    let synchronized = synchronized(&cp, &vm);
    if verbose {
        if let Some((status, reason, message)) = &synchronized {
            println!("\nthe VMI's condition Synchronized: {status} ({reason}): {message}");
        }
        println!("\nwhat the agent saw (hotplug-watchdog scan --kubeconfig ...):");
        let out = std::process::Command::new(agent_binary())
            .args(["scan", "--mountinfo", "/proc/self/mountinfo", "--node-name", NODE, "--kubelet-root"])
            .arg(&tree.root)
            .arg("--kubeconfig")
            .arg(cp.agent_kubeconfig(NODE))
            .output()
            .expect("run scan");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        println!("\nits metrics:");
        for line in agent.metrics().lines().filter(|l| {
            (l.starts_with("hotplug_watchdog_device_vanished_total{")
                || l.starts_with("hotplug_watchdog_attachment_pod_handoff_safe{"))
                && !l.ends_with(" 0")
                || l.starts_with("hotplug_watchdog_volume_state{") && l.ends_with(" 1")
        }) {
            println!("  {line}");
        }
    }
    Outcome {
        old_pod_deleted: !pod_exists(&cp, NS, OLD),
        vanished,
        vanished_events,
        disk1_state,
        controller: stats,
        synchronized,
    }
}

/// What the controller did, on the timeline: its DELETEs, the gate's decisions, its Events.
fn report_controller(t: &Timeline, s: &Stats, devices_appeared: Instant) {
    let refused: Vec<_> = s.refusals().into_iter().filter(|a| a.pod == OLD).collect();
    if let Some(first) = refused.first() {
        t.say_at(
            first.at,
            "controller",
            format!("DELETE {OLD} (grace period 0, {}) refused by the API server:", first.path),
        );
        t.say_at(first.at, "", format!("  {}", first.refused.as_deref().unwrap_or_default()));
        t.say_at(
            first.at,
            "controller",
            "FailedDelete Event, requeue with backoff (the refusal in its log, not on the VMI)",
        );
    }
    if let (Some(first), Some(last)) = (refused.first(), refused.last()) {
        if refused.len() > 1 {
            t.say_at(
                last.at,
                "controller",
                format!(
                    "{} DELETEs refused in {:.1} s (5 ms backoff doubling per failure, and at once on each pod/VMI change)",
                    refused.len(),
                    last.at.duration_since(first.at).as_secs_f64()
                ),
            );
        }
    }
    let mut reasons: Vec<String> = Vec::new();
    for (pod, d, at) in &s.gate {
        let line = format!("gate on {pod}: {} {}", if d.allowed { "allowed" } else { "blocked" }, d.reason);
        if !reasons.contains(&line) {
            reasons.push(line);
            t.say_at(*at, "controller", format!("{} ({})", reasons.last().unwrap(), d.message));
        }
    }
    match s.deleted(OLD) {
        Some(at) => t.say_at(
            at,
            "controller",
            format!(
                "DELETE {OLD} (grace period 0) went through, {:.0} ms after the new pod's devices appeared",
                at.duration_since(devices_appeared).as_secs_f64() * 1e3
            ),
        ),
        None => t.say(
            "controller",
            format!("{OLD} kept ({} DELETEs sent)", s.attempts.iter().filter(|a| a.pod == OLD).count()),
        ),
    }
    let failed: u32 = s.events.iter().filter(|((_, r, _), _)| r == "FailedDelete").map(|(_, n)| *n).sum();
    if failed > 0 {
        t.say(
            "controller",
            format!(
                "Events on vm1: FailedDelete x{failed} ({} Event API writes, {} dropped by the spam filter)",
                s.event_writes, s.events_dropped
            ),
        );
    }
}
