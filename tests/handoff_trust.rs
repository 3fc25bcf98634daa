//! The handoff signal cannot be forged and fails closed, on the real control plane with real
//! loop devices. `hotplug-watchdog.io/HandoffSafe=True` lets a controller delete a pod that
//! may hold a running VM's disk: here intruders and faults try to make the agent say it
//! without positive evidence, and the agent says it promptly when nothing is left to protect.
//!
//! What these tests guard against was seen on the agent before roles came from the API
//! (issue #12: an intruder turned the victim's condition True within a second; an
//! unreadable launcher read as "no volumes"); the tests were written against the fixed
//! agent and not run against the old one.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::control_plane::ControlPlane;
use support::kubevirt::*;
use support::*;

const HANDOFF_SAFE: &str = "hotplug-watchdog.io/HandoffSafe";

/// The HandoffSafe condition of `ns/pod`: (status, reason).
fn handoff(cp: &ControlPlane, ns: &str, pod: &str) -> Option<(String, String)> {
    cp.rt.block_on(async {
        let p = Api::<Pod>::namespaced(cp.admin.clone(), ns).get(pod).await.ok()?;
        let c = p.status?.conditions?.into_iter().find(|c| c.type_ == HANDOFF_SAFE)?;
        Some((c.status, c.reason.unwrap_or_default()))
    })
}

/// The agent writes a pod at most once a second: before a change whose reaction is
/// measured, let that window pass, so that the figure is the agent's reaction and not the
/// rate limit.
fn after_rate_limit_window() {
    std::thread::sleep(Duration::from_millis(1100));
}

fn wait_handoff(agent: &Agent, cp: &ControlPlane, pod: &str, status: &str, reason: &str) -> Duration {
    let start = Instant::now();
    agent.wait_until(&format!("{pod} HandoffSafe={status} ({reason})"), Duration::from_secs(20), |_| {
        handoff(cp, NS, pod) == Some((status.into(), reason.into()))
    });
    start.elapsed()
}

fn create_pod(cp: &ControlPlane, pod: serde_json::Value) -> String {
    cp.rt.block_on(async {
        let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        let _ = nss
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await;
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), &ns);
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap().metadata.uid.unwrap()
    })
}

/// A pod on the VM's node whose directory looks exactly like an attachment pod serving the
/// victim's disk: an emptyDir named hotplug-disks, `hp.sock`, a block node with the VM's
/// device number (mknod is a default container capability).
fn intruder_dir(tree: &KubeletTree, uid: &str, disk: &LoopDevice) {
    tree.attachment(uid);
    tree.attach_block(uid, "disk1", disk.dev());
}

/// The VM's node with disk1 hotplugged, and the agent watching it in cluster mode, once it
/// has said that the VM's only attachment pod is not safe to delete.
fn watched_vm() -> (ControlPlane, Vm, KubeletTree, LoopDevice, Agent) {
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, disk) = node_with_disk1(&vm);
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");
    (cp, vm, tree, disk, agent)
}

fn unconfirmed(agent: &Agent) -> Vec<String> {
    agent.report()["unconfirmed"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect()
}

#[test]
fn intruders_never_make_a_sole_backer_safe() {
    if !require_root("intruders_never_make_a_sole_backer_safe") {
        return;
    }
    let (cp, vm, tree, disk, agent) = watched_vm();

    let on_node = |name: &str, ns: &str, labels: serde_json::Value, owners: serde_json::Value| {
        json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owners},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
        })
    };
    let victim_launcher = json!([{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-vm1-abcde",
        "uid": vm.launcher_uid, "controller": true}]);
    let hotplug = json!({"kubevirt.io": "hotplug-disk"});
    // A launcher of another namespace claiming the victim's VMI (created-by and owner), and an
    // attachment pod it "owns".
    let fake_launcher = create_pod(
        &cp,
        on_node(
            "virt-launcher-fake",
            "evil",
            json!({"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vm.vmi_uid}),
            json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1", "uid": vm.vmi_uid, "controller": true}]),
        ),
    );
    let fake_owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-fake", "uid": fake_launcher, "controller": true}]);
    let variants = [
        (
            "label and the victim's launcher as controller owner, other namespace",
            Some(on_node("hp-volume-evil1", "evil", hotplug.clone(), victim_launcher.clone())),
        ),
        ("the label alone", Some(on_node("hp-volume-evil2", "evil", hotplug.clone(), json!([])))),
        ("neither label nor owner", Some(on_node("plain", "evil", json!({}), json!([])))),
        ("owned by a forged launcher", Some(on_node("hp-volume-evil3", "evil", hotplug.clone(), fake_owner))),
        ("a directory no pod in the API has", None),
    ];
    for (i, (what, pod)) in variants.into_iter().enumerate() {
        let uid = match pod {
            Some(p) => create_pod(&cp, p),
            None => format!("00000000-0000-0000-0000-00000000000{i}"),
        };
        intruder_dir(&tree, &uid, &disk);
        agent.wait_until(&format!("{what}: reported unconfirmed"), Duration::from_secs(20), |a| {
            unconfirmed(a).contains(&uid)
        });
        // The write of a changed verdict is immediate: give it a moment to go wrong.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            handoff(&cp, NS, "hp-volume-aaaaa"),
            Some(("False".into(), "SoleBacker".into())),
            "{what}: the VM's only attachment pod must stay unsafe"
        );
        let r = agent.report();
        let victim =
            r["attachment_pods"].as_array().unwrap().iter().find(|p| p["pod_uid"] == vm.attachment_uid).unwrap();
        assert_eq!(victim["handoff_reason"], "SoleBacker", "{what}");
        let disk1 = volume_entry(&r, &vm.launcher_uid, "disk1").unwrap();
        assert_eq!(disk1["backing_pods"], json!([vm.attachment_uid]), "{what}: the intruder backs nothing");
        // No condition is written on a pod the API does not confirm.
        if let Some(name) = r["attachment_pods"].as_array().unwrap().iter().find(|p| p["pod_uid"] == uid) {
            panic!("{what}: judged as an attachment pod: {name}");
        }
    }
    assert_eq!(
        metric(&agent.metrics(), "hotplug_watchdog_unconfirmed_pod_directories"),
        5.0,
        "every intruder directory is counted"
    );
    for name in ["hp-volume-evil1", "hp-volume-evil2", "hp-volume-evil3"] {
        let theirs =
            cp.rt.block_on(async { Api::<Pod>::namespaced(cp.admin.clone(), "evil").get(name).await.unwrap() });
        let conds = theirs.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(conds.iter().all(|c| !c.type_.starts_with("hotplug-watchdog.io/")), "{name}: {conds:?}");
    }
}

#[test]
fn unreadable_directories_are_unknown_never_safe() {
    if !require_root("unreadable_directories_are_unknown_never_safe") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1"]);
    let (tree, disk) = node_with_disk1(&vm);
    let agent =
        Agent::start_cluster_without_dac(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");
    let chmod = |p: &std::path::Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    // A new entry: an event the agent must read the directory for.
    let n = std::cell::Cell::new(0);
    let touch = |dir: &std::path::Path| {
        n.set(n.get() + 1);
        std::fs::write(dir.join(format!("touched-{}", n.get())), b"").unwrap()
    };

    // The launcher's directory turns unreadable (EACCES to the agent): before, the VM's
    // volumes read as none and its only attachment pod as safe to delete.
    let launcher_dir = tree.hotplug_dir(&vm.launcher_uid);
    chmod(&launcher_dir, 0o300);
    std::fs::remove_file(launcher_dir.join("disk1")).ok(); // a change the agent must read
    make_block_node(&launcher_dir.join("disk1"), disk.dev());
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "Unknown", "LauncherUnreadable");
    assert_eq!(
        volume_state(&agent.report(), &vm.launcher_uid, "disk1").as_deref(),
        Some("ready"),
        "the last complete read stands: volumes are never forgotten on an error"
    );
    chmod(&launcher_dir, 0o755);
    touch(&launcher_dir);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");

    // A volume directory inside the attachment pod turns unreadable: before, the pod served
    // nothing and was safe to delete.
    let volume_dir = tree.hotplug_dir(&vm.attachment_uid).join("disk1");
    chmod(&volume_dir, 0o000);
    touch(&tree.hotplug_dir(&vm.attachment_uid));
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "Unknown", "DirectoryUnreadable");
    let present = handoff_condition(&cp, "hotplug-watchdog.io/DevicesPresent");
    assert_eq!(present.as_deref(), Some("Unknown"));
    chmod(&volume_dir, 0o755);
    touch(&tree.hotplug_dir(&vm.attachment_uid));
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");

    // Out of file descriptors (EMFILE): the agent's next read of the launcher cannot open a
    // directory.
    let set_limit = |soft: Option<u64>| {
        let pid = agent.pid() as i32;
        let mut old = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: prlimit on another process with valid pointers.
        let r = unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(r, 0, "prlimit get: {}", std::io::Error::last_os_error());
        let new = nix::libc::rlimit { rlim_cur: soft.unwrap_or(old.rlim_max), rlim_max: old.rlim_max };
        // SAFETY: as above.
        let r = unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(r, 0, "prlimit set: {}", std::io::Error::last_os_error());
    };
    // A soft limit of 3: descriptors 0-2 are taken, so every new open fails; those already
    // open (watches, the API connections) go on working.
    set_limit(Some(3));
    touch(&launcher_dir);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "Unknown", "LauncherUnreadable");
    set_limit(None);
    touch(&launcher_dir);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");
    assert!(agent.log().contains("EMFILE") || agent.log().contains("Too many open files"), "the error is logged");

    fn handoff_condition(cp: &ControlPlane, type_: &str) -> Option<String> {
        cp.rt.block_on(async {
            let p = Api::<Pod>::namespaced(cp.admin.clone(), NS).get("hp-volume-aaaaa").await.ok()?;
            p.status?.conditions?.into_iter().find(|c| c.type_ == type_).map(|c| c.status)
        })
    }
}

#[test]
fn a_pending_filesystem_volume_and_a_wrong_mount_table_are_unknown() {
    if !require_root("a_pending_filesystem_volume_and_a_wrong_mount_table_are_unknown") {
        return;
    }
    let cp = ControlPlane::start();
    let vm = create_vm(&cp, &["disk1", "fs1"]);
    let (tree, disk) = node_with_disk1(&vm);
    let agent = Agent::start_cluster(&tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--rescan-interval", "1h"]);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");
    // virt-handler made fs1's image file; its bind mount is not there yet: which pod will
    // back it is not known.
    std::fs::write(tree.hotplug_dir(&vm.launcher_uid).join("fs1.img"), b"").unwrap();
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "Unknown", "FilesystemVolumePending");
    std::fs::remove_file(tree.hotplug_dir(&vm.launcher_uid).join("fs1.img")).unwrap();
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");
    drop(agent);

    // The mount table names another kubelet root than the one read (a distribution that
    // keeps the kubelet elsewhere): not ready, one error naming both paths, nothing safe.
    let other = tempfile::tempdir().unwrap();
    let agent = Agent::start_cluster(
        &tree.root,
        &cp.agent_kubeconfig(NODE),
        NODE,
        &["--rescan-interval", "1h", "--mountinfo-kubelet-root", other.path().to_str().unwrap()],
    );
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "Unknown", "MountTableMismatch");
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(other.path().to_str().unwrap()) && body.contains(tree.root.to_str().unwrap()), "{body}");
    let _ = disk;
}

#[test]
fn nothing_left_to_protect_turns_true_promptly() {
    if !require_root("nothing_left_to_protect_turns_true_promptly") {
        return;
    }
    let (cp, vm, tree, _disk, agent) = watched_vm();
    let pods = Api::<Pod>::namespaced(cp.admin.clone(), NS);
    let mut reactions = Vec::new();

    // The VMI is final: KubeVirt's deleteAllAttachmentPods must not be held.
    after_rate_limit_window();
    cp.rt.block_on(async {
        let patch = json!({"status": {"phase": "Failed"}});
        vmi_api(&cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    reactions.push(("VMI Failed", wait_handoff(&agent, &cp, "hp-volume-aaaaa", "True", "VMIFinal")));
    cp.rt.block_on(async {
        let patch = json!({"status": {"phase": "Running"}});
        vmi_api(&cp).patch("vm1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    });
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");

    // The launcher is down (a migration source that finished: deleteOrphanedAttachmentPods).
    let set_phase = |phase: &str| {
        cp.rt.block_on(async {
            let patch = json!({"status": {"phase": phase}});
            pods.patch_status("virt-launcher-vm1-abcde", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        })
    };
    after_rate_limit_window();
    set_phase("Succeeded");
    reactions.push(("launcher Succeeded", wait_handoff(&agent, &cp, "hp-volume-aaaaa", "True", "LauncherGone")));
    set_phase("Running");
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "False", "SoleBacker");

    // A WaitForFirstConsumer trigger pod of the same launcher: no VM uses it.
    let trigger_uid = cp.rt.block_on(async {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "hp-volume-trigger", "namespace": NS, "labels": {"kubevirt.io": "hotplug-disk"},
                "annotations": {"kubevirt.io/ephemeral-provisioning": "true"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "virt-launcher-vm1-abcde", "uid": vm.launcher_uid, "controller": true}]},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap().metadata.uid.unwrap()
    });
    tree.attachment(&trigger_uid);
    wait_handoff(&agent, &cp, "hp-volume-trigger", "True", "TriggerPod");

    // The launcher is being deleted (no kubelet here: it stays with a deletionTimestamp).
    after_rate_limit_window();
    cp.rt.block_on(async { pods.delete("virt-launcher-vm1-abcde", &DeleteParams::default()).await.unwrap() });
    reactions.push(("launcher deleted", wait_handoff(&agent, &cp, "hp-volume-aaaaa", "True", "LauncherGone")));
    for (what, took) in &reactions {
        println!(
            "HandoffSafe True after {what}: {:.0} ms (API write to condition seen, 10 ms polling)",
            took.as_secs_f64() * 1e3
        );
    }
}

#[test]
fn a_launcher_directory_that_is_gone_protects_nothing() {
    if !require_root("a_launcher_directory_that_is_gone_protects_nothing") {
        return;
    }
    let (cp, vm, tree, _disk, agent) = watched_vm();
    after_rate_limit_window();
    tree.remove_pod(&vm.launcher_uid);
    // The removal is seen in steps (the VM's node first: NoDeviceInUse, then the
    // directory: LauncherGone); the first True is the reaction that matters.
    let start = Instant::now();
    agent.wait_until("HandoffSafe True", Duration::from_secs(20), |_| {
        handoff(&cp, NS, "hp-volume-aaaaa").is_some_and(|(status, _)| status == "True")
    });
    println!("HandoffSafe True after the launcher's directory went: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    wait_handoff(&agent, &cp, "hp-volume-aaaaa", "True", "LauncherGone");
}
