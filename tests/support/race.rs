//! The hotplug race of kubevirt#6564 / #9708, played on a real API server and real loop
//! devices while the real agent watches (cluster mode). This module plays everyone else:
//! - KubeVirt's controller, following `cleanupAttachmentPods` in v1.9.0
//!   (pkg/virt-controller/watch/vmi/volume-hotplug.go, see docs/CODEPATH.md): a new
//!   attachment pod holding all volumes, and the old one deleted as soon as the new one is
//!   Running; or, with the fix, only once the old pod's `hotplug-watchdog.io/HandoffSafe`
//!   condition is True (the rule of contrib/kubevirt/gate for a node where the agent reports);
//! - the kubelet and the storage driver: an attachment pod's device appears when the pod
//!   starts and is torn down when it is deleted; a new device per pod (nbd, NVMe-oF,
//!   iSCSI) or one shared device (kernel rbd);
//! - virt-handler: mknod of a new volume's device into the launcher, never re-pointing a
//!   node it made before.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::control_plane::ControlPlane;
use super::kubevirt::*;
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// KubeVirt v1.9.0: delete the old pod once the new one is Running.
    Today,
    /// The fix: also wait for the old pod's HandoffSafe condition to be True.
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
}

struct Timeline {
    start: Instant,
    verbose: bool,
}

impl Timeline {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        if self.verbose {
            println!("{:>8.0} ms  {who:<15} {}", self.start.elapsed().as_secs_f64() * 1e3, what.as_ref());
        }
    }
}

fn set_running(cp: &ControlPlane, pod: &str) {
    cp.rt.block_on(async {
        let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        Api::<Pod>::namespaced(cp.admin.clone(), NS)
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .unwrap();
    });
}

fn handoff_safe(cp: &ControlPlane, pod: &str) -> Option<String> {
    cp.rt.block_on(async {
        let p = Api::<Pod>::namespaced(cp.admin.clone(), NS).get(pod).await.ok()?;
        let conds = p.status?.conditions?;
        conds.into_iter().find(|c| c.type_ == "hotplug-watchdog.io/HandoffSafe").map(|c| c.status)
    })
}

/// Plays one hotplug of a second volume; `hold` is how long the gated controller waits
/// for a safe handoff before the demo ends (the fix's deadline is far longer).
pub fn play(rule: Rule, devices: Devices, hold: Duration, verbose: bool) -> Outcome {
    let t = Timeline { start: Instant::now(), verbose };
    let cp = ControlPlane::start();
    t.say("setup", "kube-apiserver and etcd running, KubeVirt VMI CRD installed");
    let vm = create_vm(&cp, &["rootdisk", "disk1"]);
    let (tree, mut old_dev) = node_with_disk1(&vm);
    set_running(&cp, "virt-launcher-vm1-abcde");
    set_running(&cp, "hp-volume-aaaaa");
    t.say("setup", format!("VM vm1 uses hotplugged disk1 = {} from hp-volume-aaaaa", old_dev.dev()));

    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
    agent.wait_until("the agent sees vm1", Duration::from_secs(30), |a| {
        volume_entry(&a.report(), &vm.launcher_uid, "disk1").is_some_and(|v| v["state"] == "ready" && v["vmi"] == "vm1")
    });
    t.say("agent", "disk1 ready; conditions on hp-volume-aaaaa");

    // The user hotplugs disk2: the controller makes a new pod holding both volumes.
    cp.rt.block_on(async {
        let patch = json!({"spec": {"volumes": [{"name": "rootdisk"}, {"name": "disk1"}, {"name": "disk2"}]}});
        vmi_api(&cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    let new_uid = cp.rt.block_on(create_attachment_pod(&cp, "hp-volume-bbbbb", &vm.launcher_uid));
    t.say("controller", "disk2 added to the spec: created hp-volume-bbbbb holding disk1 and disk2");
    let disk1_new = match devices {
        Devices::PerPod => Some(LoopDevice::add()),
        Devices::Shared => None,
    };
    let disk2_dev = LoopDevice::add();
    let disk1_in_new = disk1_new.as_ref().map_or(old_dev.dev(), |d| d.dev());
    tree.attachment(&new_uid);
    tree.attach_block(&new_uid, "disk1", disk1_in_new);
    tree.attach_block(&new_uid, "disk2", disk2_dev.dev());
    set_running(&cp, "hp-volume-bbbbb");
    t.say("kubelet", format!("hp-volume-bbbbb Running: disk1 = {disk1_in_new}, disk2 = {}", disk2_dev.dev()));
    tree.launcher_block(&vm.launcher_uid, "disk2", disk2_dev.dev());
    t.say("virt-handler", "mknod disk2 into the launcher; disk1's node stays as it is");

    // Cleanup.
    let deadline = Instant::now() + hold;
    let delete_old = match rule {
        Rule::Today => {
            t.say("controller", "the new pod is Running: deleting hp-volume-aaaaa (v1.9.0 rule)");
            true
        }
        Rule::Gated => loop {
            match handoff_safe(&cp, "hp-volume-aaaaa").as_deref() {
                Some("True") => {
                    t.say("controller", "hp-volume-aaaaa HandoffSafe=True: deleting it");
                    break true;
                }
                _ if Instant::now() >= deadline => {
                    t.say("controller", format!("hp-volume-aaaaa HandoffSafe=False after {hold:?}: kept"));
                    break false;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        },
    };
    if delete_old {
        cp.rt.block_on(async {
            let _ =
                Api::<Pod>::namespaced(cp.admin.clone(), NS).delete("hp-volume-aaaaa", &DeleteParams::default()).await;
        });
        tree.remove_pod(&vm.attachment_uid);
        if devices == Devices::PerPod {
            old_dev.remove();
            t.say("storage driver", format!("old pod gone: tore down its device {}", old_dev.dev()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    if delete_old && devices == Devices::PerPod {
        agent.wait_volume(&vm.launcher_uid, "disk1", Some("vanished"));
    }
    let disk1_state = volume_state(&agent.report(), &vm.launcher_uid, "disk1");
    t.say("agent", format!("disk1 is {}", disk1_state.as_deref().unwrap_or("?")));
    let series = format!(
        "hotplug_watchdog_device_vanished_total{{pod_uid=\"{}\",volume=\"disk1\",namespace=\"{NS}\",vmi=\"vm1\",pod=\"virt-launcher-vm1-abcde\"}}",
        vm.launcher_uid
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
    if verbose {
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
    Outcome { old_pod_deleted: delete_old, vanished, vanished_events, disk1_state }
}
