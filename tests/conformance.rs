//! The conformance lane: KubeVirt v1.9.0's own `virt-controller` against the agent.
//!
//! Run by `scripts/conformance <kubevirt-v1.9.0-checkout>`, which builds the controller
//! twice from the checkout (as released, and with contrib/kubevirt's gate applied in-tree)
//! and the release's own objects (CRDs, PriorityClass, virt-controller's ServiceAccount and
//! RBAC, a KubeVirt CR), and passes their paths in `HOTPLUG_WATCHDOG_VIRT_CONTROLLER`,
//! `HOTPLUG_WATCHDOG_VIRT_CONTROLLER_GATED` and `HOTPLUG_WATCHDOG_KUBEVIRT_OBJECTS`. Declared
//! `test = false` in Cargo.toml: plain `cargo test` and scripts/test never run it.
//!
//! Each scenario starts the real kube-apiserver + etcd (the ServiceAccount admission plugin
//! on, as in a real cluster), installs the release's objects, starts the real
//! virt-controller (its own ServiceAccount, through impersonation; leader election on its
//! Lease) and the agent in cluster mode. What has no binary here is played by [`Node`]:
//! - the scheduler: binds every unbound pod of the VM's namespace to the node;
//! - the kubelet: starts a bound pod (phase Running, Ready conditions, one running and
//!   ready status per container, as KubeVirt's `IsPodReady` and `processHotplugVolumeStatus`
//!   read them), lays out its directories in a temp kubelet tree, removes them when the
//!   pod is gone, and ends the launcher when the guest shuts down;
//! - the storage driver: a new loop device for every PVC of every attachment pod
//!   (`Devices::PerPod`: nbd, NVMe-oF, iSCSI), or one device per PVC that every pod maps
//!   (`Devices::Shared`: kernel rbd), torn down when no pod serves it any more;
//! - virt-handler: the VMI `Scheduled` -> `Running`; for a hotplug volume the controller
//!   has put `AttachedToNode` with the attachment pod's UID, mknod of that pod's device in
//!   the launcher (once: a node it made is never re-pointed), `MountedToPod`, then `Ready`
//!   with a target, with v1.9.0's reasons and messages (`updateHotplugVolumeStatus`,
//!   pkg/virt-handler/vm.go);
//! - virt-api: a hotplug is the JSON patch of `VMIAddVolumeRequestHandler`
//!   (`generateVolumeRequestPatch`: test and replace of the volumes and the disks).
//!
//! Each scenario asserts what the controller did (pods, its Events, its log, the API
//! server's admission counters) and what the agent reported. Waits are bounded; latencies
//! and rates are printed, never asserted (the backoff is asserted only as fewer attempts
//! and Events in the second minute than in the first).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotplug_watchdog::device::DevNum;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use support::control_plane::ControlPlane;
use support::controller::{self, CONTROLLER_USER};
use support::kubevirt::{handoff_condition, vmi_api_in};
use support::*;

const NS: &str = "vms";
const NODE: &str = "node-1";
const VM: &str = "vm1";
const KUBEVIRT_NS: &str = "kubevirt";
/// Bound of every wait for something that happens within seconds when it happens at all.
const WAIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------ the lane's inputs

struct Lane {
    released: PathBuf,
    gated: PathBuf,
    objects: PathBuf,
}

fn lane() -> Lane {
    let var = |k: &str| {
        let p = PathBuf::from(
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} is unset: run scripts/conformance <kubevirt-v1.9.0-checkout>")),
        );
        assert!(p.is_file(), "{k}={}: no such file (run scripts/conformance)", p.display());
        p
    };
    Lane {
        released: var("HOTPLUG_WATCHDOG_VIRT_CONTROLLER"),
        gated: var("HOTPLUG_WATCHDOG_VIRT_CONTROLLER_GATED"),
        objects: var("HOTPLUG_WATCHDOG_KUBEVIRT_OBJECTS"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ------------------------------------------------------------------------ the timeline

#[derive(Clone)]
struct Timeline(Instant);

impl Timeline {
    fn ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.0).as_secs_f64() * 1e3
    }

    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!("{:>8.0} ms  {who:<15} {}", self.ms(Instant::now()), what.as_ref());
    }
}

// ------------------------------------------------------------------------ KubeVirt's objects

/// Installs what KubeVirt's operator would for virt-controller, as the release generates it
/// (tools/conformance/kubevirt-objects.go): the CRDs (replacing the control plane's fixture
/// VMI CRD), the PriorityClass, the ServiceAccount and RBAC, the KubeVirt CR.
fn install_kubevirt(cp: &ControlPlane, objects: &Path) {
    let text = fs::read_to_string(objects).unwrap();
    let objects: Vec<Value> =
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    cp.rt.block_on(async {
        let pp = PostParams::default();
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
        nss.create(&pp, &serde_json::from_value(json!({"metadata": {"name": KUBEVIRT_NS}})).unwrap()).await.unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(cp.admin.clone());
        let mut names = Vec::new();
        for o in objects.iter().filter(|o| o["kind"] == "CustomResourceDefinition") {
            let mut crd: CustomResourceDefinition = serde_json::from_value(o.clone()).unwrap();
            let name = crd.metadata.name.clone().unwrap();
            match crds.get_opt(&name).await.unwrap() {
                Some(old) => {
                    crd.metadata.resource_version = old.metadata.resource_version;
                    crds.replace(&name, &pp, &crd).await.unwrap_or_else(|e| panic!("replace CRD {name}: {e}"));
                }
                None => {
                    crds.create(&pp, &crd).await.unwrap_or_else(|e| panic!("create CRD {name}: {e}"));
                }
            }
            names.push(name);
        }
        let deadline = Instant::now() + WAIT;
        for name in &names {
            loop {
                let c = crds.get(name).await.unwrap();
                let conditions = c.status.and_then(|s| s.conditions).unwrap_or_default();
                if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                    break;
                }
                assert!(Instant::now() < deadline, "CRD {name} not established");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for o in objects.iter().filter(|o| o["kind"] != "CustomResourceDefinition") {
            let kind = o["kind"].as_str().unwrap();
            let (plural, namespaced) = match kind {
                "PriorityClass" => ("priorityclasses", false),
                "ServiceAccount" => ("serviceaccounts", true),
                "ClusterRole" => ("clusterroles", false),
                "ClusterRoleBinding" => ("clusterrolebindings", false),
                "Role" => ("roles", true),
                "RoleBinding" => ("rolebindings", true),
                "KubeVirt" => ("kubevirts", true),
                other => panic!("kubevirt-objects printed an unexpected kind {other}"),
            };
            let api_version = o["apiVersion"].as_str().unwrap();
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(cp.admin.clone(), o["metadata"]["namespace"].as_str().unwrap(), &ar)
            } else {
                Api::all_with(cp.admin.clone(), &ar)
            };
            let obj: DynamicObject = serde_json::from_value(o.clone()).unwrap();
            // A CRD just established may take a moment to be served for writes.
            loop {
                match api.create(&pp, &obj).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 404 && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(e) => panic!("create {kind} {}: {e}", obj.metadata.name.as_deref().unwrap_or("?")),
                }
            }
        }
    });
}

// ------------------------------------------------------------------------ virt-controller

/// The real virt-controller, as its own ServiceAccount, killed on drop; its log kept.
struct VirtController {
    child: Option<Child>,
    log: PathBuf,
}

impl VirtController {
    fn start(cp: &ControlPlane, t: &Timeline, binary: &Path, label: &str, extra: &[&str]) -> Self {
        let kubeconfig = cp.kubeconfig_as(CONTROLLER_USER, "virt-controller.kubeconfig");
        let log = cp.dir().join(format!("virt-controller-{label}.log"));
        let out = fs::File::create(&log).unwrap();
        let port = free_port().to_string();
        let child = Command::new(binary)
            .current_dir(cp.dir())
            // clientutil.GetNamespace: where the KubeVirt CR and the controller's Lease are.
            .env("KUBEVIRT_NAMESPACE", KUBEVIRT_NS)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", "127.0.0.1", "--port", &port])
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut ctl = VirtController { child: Some(child), log };
        // Leader election: it starts its controllers once it holds its Lease.
        let leases: Api<Lease> = Api::namespaced(cp.admin.clone(), KUBEVIRT_NS);
        let deadline = Instant::now() + WAIT;
        loop {
            let held = cp.rt.block_on(leases.list(&ListParams::default())).unwrap().items.into_iter().find_map(|l| {
                let holder = l.spec.as_ref()?.holder_identity.clone().filter(|h| !h.is_empty())?;
                Some((l.metadata.name.unwrap_or_default(), holder))
            });
            if let Some((name, holder)) = held {
                t.say("virt-controller", format!("{label}: leader (Lease {KUBEVIRT_NS}/{name}, holder {holder})"));
                break;
            }
            if let Some(status) = ctl.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("virt-controller exited ({status}):\n{}", ctl.log_tail(40));
            }
            assert!(Instant::now() < deadline, "virt-controller took no Lease in {WAIT:?}:\n{}", ctl.log_tail(40));
            std::thread::sleep(Duration::from_millis(200));
        }
        ctl
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its log lines that contain `needle`, with the JSON's `msg` when there is one.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => format!(
                    "[{}] {}{}",
                    v["level"].as_str().unwrap_or("?"),
                    v["msg"].as_str().unwrap_or(l),
                    v["reason"].as_str().map(|r| format!(" (reason: {r})")).unwrap_or_default()
                ),
                Err(_) => l.to_string(),
            })
            .collect()
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for VirtController {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- virt-controller log, last lines ({}):\n{}", self.log.display(), self.log_tail(60));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------ the node's players

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Devices {
    /// Each attachment pod gets its own device for each PVC (nbd, NVMe-oF, iSCSI).
    PerPod,
    /// One device per PVC, mapped by every pod that serves it (kernel rbd).
    Shared,
}

/// A pod the kubelet started.
struct Started {
    name: String,
    /// The devices the storage driver gave an attachment pod, per volume.
    volumes: BTreeMap<String, DevNum>,
}

struct NodeState {
    devices: Devices,
    tree: Arc<KubeletTree>,
    started: BTreeMap<String, Started>,
    per_pod: HashMap<(String, String), LoopDevice>,
    shared: HashMap<String, (LoopDevice, usize)>,
    /// The launcher pod (name, uid) once started.
    launcher: Option<(String, String)>,
    /// Volumes whose node virt-handler made in the launcher (never re-pointed).
    in_launcher: BTreeSet<String>,
    next_target: u8,
    /// The guest shut down: the launcher ends and virt-handler reports the VMI Succeeded.
    shutdown: bool,
    running_at: HashMap<String, Instant>,
    gone_at: HashMap<String, Instant>,
}

/// The scheduler, the kubelet, the storage driver and virt-handler of one node, on a
/// thread of their own, polling the API server every 100 ms.
struct Node {
    state: Arc<Mutex<NodeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    tree: Arc<KubeletTree>,
}

impl Node {
    fn start(cp: &ControlPlane, t: &Timeline, devices: Devices) -> Self {
        let tree = Arc::new(KubeletTree::new());
        let state = Arc::new(Mutex::new(NodeState {
            devices,
            tree: tree.clone(),
            started: BTreeMap::new(),
            per_pod: HashMap::new(),
            shared: HashMap::new(),
            launcher: None,
            in_launcher: BTreeSet::new(),
            next_target: 0,
            shutdown: false,
            running_at: HashMap::new(),
            gone_at: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (client, handle, t) = (cp.admin.clone(), cp.rt.handle().clone(), t.clone());
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                if let Err(e) = handle.block_on(tick(&client, &t, &st)) {
                    // A conflict with the controller's own write, or a pod gone meanwhile:
                    // the next tick reads again.
                    if !matches!(&e, kube::Error::Api(s) if s.code == 409 || s.code == 404 || s.code == 422) {
                        t.say("node", format!("(retrying) {e}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Node { state, stop, thread: Some(thread), tree }
    }

    fn running_at(&self, pod: &str) -> Option<Instant> {
        self.state.lock().unwrap().running_at.get(pod).copied()
    }

    fn gone_at(&self, pod: &str) -> Option<Instant> {
        self.state.lock().unwrap().gone_at.get(pod).copied()
    }

    fn launcher(&self) -> Option<(String, String)> {
        self.state.lock().unwrap().launcher.clone()
    }

    fn shut_down_guest(&self) {
        self.state.lock().unwrap().shutdown = true;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The status the kubelet writes for a started pod (support/kubevirt.rs), with its IPs.
fn running_status(pod: &Pod, ip: &str) -> Value {
    let mut status = support::kubevirt::kubelet_running_status(pod);
    status["hostIP"] = json!("10.0.0.1");
    status["podIP"] = json!(ip);
    status["podIPs"] = json!([{"ip": ip}]);
    json!({"status": status})
}

/// The status the kubelet writes when the launcher's containers exited 0.
fn succeeded_status(pod: &Pod) -> Value {
    let now = now_rfc3339();
    let containers: Vec<Value> = pod.spec.as_ref().unwrap().containers.iter().map(|c| {
        json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": false, "started": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}})
    }).collect();
    json!({"status": {"phase": "Succeeded", "containerStatuses": containers,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]}})
}

fn is_attachment(p: &Pod) -> bool {
    p.metadata.labels.as_ref().and_then(|l| l.get("kubevirt.io")).map(String::as_str) == Some("hotplug-disk")
}

fn is_launcher(p: &Pod) -> bool {
    p.metadata.labels.as_ref().and_then(|l| l.get("kubevirt.io")).map(String::as_str) == Some("virt-launcher")
}

fn pvc_volumes(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| vs.iter().filter(|v| v.persistent_volume_claim.is_some()).map(|v| v.name.clone()).collect())
        .unwrap_or_default()
}

/// One round of every player.
async fn tick(client: &Client, t: &Timeline, state: &Mutex<NodeState>) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods.list(&ListParams::default()).await?.items;
    let pp = PostParams::default();

    // The kubelet and the storage driver: pods gone from the API.
    {
        let mut s = state.lock().unwrap();
        let present: BTreeSet<String> = list.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> = s.started.keys().filter(|u| !present.contains(*u)).cloned().collect();
        for uid in gone {
            let started = s.started.remove(&uid).unwrap();
            s.gone_at.insert(started.name.clone(), Instant::now());
            if s.tree.hotplug_dir(&uid).exists() {
                s.tree.remove_pod(&uid);
            }
            let mut torn = Vec::new();
            for (volume, dev) in &started.volumes {
                match s.devices {
                    Devices::PerPod => {
                        if let Some(mut d) = s.per_pod.remove(&(uid.clone(), volume.clone())) {
                            d.remove();
                            torn.push(format!("{volume} = {dev}"));
                        }
                    }
                    Devices::Shared => {
                        let last = {
                            let e = s.shared.get_mut(volume).unwrap();
                            e.1 -= 1;
                            e.1 == 0
                        };
                        if last {
                            s.shared.remove(volume).unwrap().0.remove();
                            torn.push(format!("{volume} = {dev}"));
                        }
                    }
                }
            }
            let what = if torn.is_empty() {
                "nothing torn down".to_string()
            } else {
                format!("tore down {}", torn.join(", "))
            };
            t.say("kubelet/storage", format!("{} gone: its directories removed; {what}", started.name));
        }
    }

    for p in &list {
        let name = p.metadata.name.clone().unwrap();
        let uid = p.metadata.uid.clone().unwrap();
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        // The scheduler.
        if node.is_none() {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}});
            pods.create_subresource::<Value, Value>("binding", &name, &pp, &binding).await?;
            t.say("scheduler", format!("bound {name} to {NODE}"));
            continue;
        }
        let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let known = state.lock().unwrap().started.contains_key(&uid);
        // The kubelet starts a bound pod; the storage driver attaches an attachment pod's PVCs.
        if !known && (phase.is_empty() || phase == "Pending") {
            let ip;
            let mut what = String::new();
            {
                let mut s = state.lock().unwrap();
                let mut volumes = BTreeMap::new();
                if is_attachment(p) {
                    s.tree.attachment(&uid);
                    for v in pvc_volumes(p) {
                        let dev = match s.devices {
                            Devices::PerPod => {
                                let d = LoopDevice::add();
                                let dev = d.dev();
                                s.per_pod.insert((uid.clone(), v.clone()), d);
                                dev
                            }
                            Devices::Shared => {
                                let e = s.shared.entry(v.clone()).or_insert_with(|| (LoopDevice::add(), 0));
                                e.1 += 1;
                                e.0.dev()
                            }
                        };
                        s.tree.attach_block(&uid, &v, dev);
                        what.push_str(&format!(", {v} = {dev}"));
                        volumes.insert(v, dev);
                    }
                    ip = "10.244.0.20";
                } else {
                    if is_launcher(p) {
                        s.tree.launcher(&uid);
                        s.launcher = Some((name.clone(), uid.clone()));
                    }
                    ip = "10.244.0.10";
                }
                s.started.insert(uid.clone(), Started { name: name.clone(), volumes });
            }
            pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(running_status(p, ip))).await?;
            state.lock().unwrap().running_at.insert(name.clone(), Instant::now());
            t.say("kubelet", format!("{name} Running{what}"));
            continue;
        }
        // The guest shut down: the launcher's containers exit.
        let shutdown = state.lock().unwrap().shutdown;
        if shutdown && is_launcher(p) && phase == "Running" {
            // The kubelet tears down the volumes of a terminated pod.
            {
                let s = state.lock().unwrap();
                if s.tree.hotplug_dir(&uid).exists() {
                    s.tree.remove_pod(&uid);
                }
            }
            pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(succeeded_status(p))).await?;
            t.say("kubelet", format!("{name} Succeeded (guest shut down); its directories removed"));
        }
    }

    virt_handler(client, t, state).await
}

/// virt-handler's part: the VMI's phase and its hotplug volumes' phases.
async fn virt_handler(client: &Client, t: &Timeline, state: &Mutex<NodeState>) -> Result<(), kube::Error> {
    let vmis: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &hotplug_watchdog::cluster::vmi_resource());
    let Some(mut vmi) = vmis.get_opt(VM).await? else { return Ok(()) };
    let phase = vmi.data["status"]["phase"].as_str().unwrap_or_default().to_string();
    let mut said = Vec::new();
    let shutdown = state.lock().unwrap().shutdown;
    if phase == "Scheduled" {
        vmi.data["status"]["phase"] = json!("Running");
        // virt-handler records the launcher's SELinux context, "none" on a host without
        // SELinux; the controller renders no attachment pod before it has one
        // (matchSELinuxLevelOfVMI, and createAttachmentPod drops that error silently).
        vmi.data["status"]["selinuxContext"] = json!("none");
        said.push("VMI Running (the domain started), selinuxContext none".to_string());
    } else if phase == "Running" && shutdown {
        vmi.data["status"]["phase"] = json!("Succeeded");
        said.push("VMI Succeeded (the domain shut down)".to_string());
    } else if phase == "Running" {
        let in_spec: BTreeSet<String> = vmi.data["spec"]["volumes"]
            .as_array()
            .map(|vs| vs.iter().filter_map(|v| v["name"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        let mut s = state.lock().unwrap();
        let s = &mut *s;
        if let Some(statuses) = vmi.data["status"]["volumeStatus"].as_array_mut() {
            for vs in statuses.iter_mut() {
                let name = vs["name"].as_str().unwrap_or_default().to_string();
                if vs.get("hotplugVolume").is_none() || !in_spec.contains(&name) {
                    continue;
                }
                let pod_uid = vs["hotplugVolume"]["attachPodUID"].as_str().unwrap_or_default().to_string();
                match vs["phase"].as_str().unwrap_or_default() {
                    "AttachedToNode" if !pod_uid.is_empty() => {
                        // Mount: the device the attachment pod has, made in the launcher once.
                        let Some(dev) = s.started.get(&pod_uid).and_then(|p| p.volumes.get(&name)).copied() else {
                            continue;
                        };
                        let Some((_, launcher_uid)) = s.launcher.clone() else { continue };
                        if s.in_launcher.insert(name.clone()) {
                            s.tree.launcher_block(&launcher_uid, &name, dev);
                            said.push(format!("mknod {name} = {dev} into the launcher"));
                        }
                        vs["phase"] = json!("MountedToPod");
                        vs["reason"] = json!("VolumeMountedToPod");
                        vs["message"] = json!(format!("Volume {name} has been mounted in virt-launcher pod"));
                        said.push(format!("{name} MountedToPod"));
                    }
                    "MountedToPod" => {
                        // The domain has the disk.
                        vs["phase"] = json!("Ready");
                        vs["target"] = json!(format!("sd{}", (b'a' + s.next_target) as char));
                        s.next_target += 1;
                        vs["reason"] = json!("VolumeReady");
                        vs["message"] = json!(format!("Successfully attach hotplugged volume {name} to VM"));
                        said.push(format!("{name} Ready"));
                    }
                    _ => {}
                }
            }
        }
    }
    if said.is_empty() {
        return Ok(());
    }
    // A write that fails on a newer resourceVersion is tried again on the next tick.
    vmis.replace(VM, &PostParams::default(), &vmi).await?;
    for w in said {
        t.say("virt-handler", w);
    }
    Ok(())
}

// ------------------------------------------------------------------------ one VM, hotplugged

/// The cluster with one VM whose disk1 was hotplugged: its attachment pod `old` serves it.
struct Scenario {
    t: Timeline,
    // Field order is drop order: the agent and the node before the controller, the control
    // plane last.
    agent: Agent,
    node: Node,
    ctl: VirtController,
    cp: ControlPlane,
    launcher: (String, String),
    old: String,
}

fn virt_api_add_volume(cp: &ControlPlane, volume: &str) {
    // VMIAddVolumeRequestHandler -> generateVolumeRequestPatch: test the volumes and the
    // disks as read, replace both (ApplyVolumeRequestOnVMISpec: hotpluggable: true).
    let vmis = vmi_api_in(cp, NS);
    let deadline = Instant::now() + WAIT;
    loop {
        let vmi = cp.rt.block_on(vmis.get(VM)).unwrap();
        let volumes = vmi.data["spec"]["volumes"].clone();
        let disks = vmi.data["spec"]["domain"]["devices"]["disks"].clone();
        let mut new_volumes = volumes.as_array().cloned().unwrap_or_default();
        new_volumes.push(json!({"name": volume,
            "persistentVolumeClaim": {"claimName": format!("pvc-{volume}"), "hotpluggable": true}}));
        let mut new_disks = disks.as_array().cloned().unwrap_or_default();
        new_disks.push(json!({"name": volume, "disk": {"bus": "scsi"}}));
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/volumes", "value": volumes},
            {"op": "test", "path": "/spec/domain/devices/disks", "value": disks},
            {"op": "replace", "path": "/spec/volumes", "value": new_volumes},
            {"op": "replace", "path": "/spec/domain/devices/disks", "value": new_disks}]))
        .unwrap();
        match cp.rt.block_on(vmis.patch(VM, &PatchParams::default(), &Patch::<()>::Json(patch))) {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 422 && Instant::now() < deadline => continue,
            Err(e) => panic!("hotplug {volume}: {e}"),
        }
    }
}

fn attachment_pods(cp: &ControlPlane) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let lp = ListParams::default().labels("kubevirt.io=hotplug-disk");
    let mut list = cp.rt.block_on(pods.list(&lp)).unwrap().items;
    list.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    list
}

fn volume_status(cp: &ControlPlane, volume: &str) -> Option<Value> {
    let vmi = cp.rt.block_on(vmi_api_in(cp, NS).get(VM)).ok()?;
    vmi.data["status"]["volumeStatus"].as_array()?.iter().find(|v| v["name"] == volume).cloned()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Scenario {
    /// The control plane, KubeVirt's objects, the hold policy if asked, the node, the
    /// controller, a VMI started by it, the agent, and disk1 hotplugged and Ready.
    fn setup(binary: &Path, label: &str, devices: Devices, hold: bool, ctl_flags: &[&str]) -> Self {
        let lane = lane();
        let t = Timeline(Instant::now());
        println!("\n=== {label}, {devices:?} devices{}", if hold { ", handoff hold installed" } else { "" });
        let cp = ControlPlane::start_with_service_account_admission();
        install_kubevirt(&cp, &lane.objects);
        t.say(
            "setup",
            "kube-apiserver + etcd; KubeVirt v1.9.0's CRDs, PriorityClass, virt-controller RBAC, KubeVirt CR",
        );
        if binary == lane.gated {
            cp.rt.block_on(cp.apply("contrib/kubevirt/deploy/virt-controller-lease-reader.yaml"));
            t.say(
                "setup",
                "contrib/kubevirt/deploy/virt-controller-lease-reader.yaml (the gate reads the agents' leases)",
            );
        }
        if hold {
            controller::enforce_hold_policy(&cp);
            t.say("setup", "deploy/handoff-hold-policy.yaml enforced");
        }
        cp.rt.block_on(async {
            let create = |kind: &'static str, v: Value| create_core(&cp, kind, v);
            // The node as kubelet and virt-handler label it.
            create(
                "Node",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE,
                "labels": {"kubernetes.io/hostname": NODE, "kubevirt.io/schedulable": "true"}}}),
            )
            .await;
            create("Namespace", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).await;
            // kube-controller-manager's ServiceAccount controller: every namespace has "default".
            create(
                "ServiceAccount",
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
            )
            .await;
            // The PVCs, bound (the PV controller's part) and block-mode.
            for v in ["rootdisk", "disk1", "disk2"] {
                create(
                    "PersistentVolumeClaim",
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": format!("pvc-{v}")},
                    "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block", "storageClassName": "",
                        "volumeName": format!("pv-{v}"), "resources": {"requests": {"storage": "1Gi"}}}}),
                )
                .await;
                let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                    Api::namespaced(cp.admin.clone(), NS);
                pvcs.patch_status(
                    &format!("pvc-{v}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                    "phase": "Bound", "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Gi"}}})),
                )
                .await
                .unwrap();
            }
        });
        let node = Node::start(&cp, &t, devices);
        let mut ctl = VirtController::start(&cp, &t, binary, label, ctl_flags);

        // The user creates a VMI (as it is after virt-api's defaults), one PVC disk.
        let vmi: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": VM, "namespace": NS},
            "spec": {"domain": {"devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
                    "machine": {"type": "q35"}, "memory": {"guest": "128Mi"},
                    "resources": {"requests": {"memory": "128Mi"}}},
                "terminationGracePeriodSeconds": 0,
                "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}}]}
        }))
        .unwrap();
        cp.rt.block_on(vmi_api_in(&cp, NS).create(&PostParams::default(), &vmi)).unwrap();
        t.say("user", format!("created VMI {VM}"));
        let launcher = wait_for("the controller's launcher pod, started", WAIT, || {
            assert!(ctl.alive(), "virt-controller exited:\n{}", ctl.log_tail(40));
            node.launcher()
        });
        wait_for("VMI Running", WAIT, || {
            let vmi = cp.rt.block_on(vmi_api_in(&cp, NS).get(VM)).ok()?;
            (vmi.data["status"]["phase"] == "Running").then_some(())
        });
        let agent = Agent::start_cluster(&node.tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
        t.say("agent", "started in cluster mode");

        virt_api_add_volume(&cp, "disk1");
        t.say("virt-api", "hotplug disk1: spec.volumes and spec.domain.devices.disks patched");
        let old = wait_for("disk1 Ready", WAIT, || {
            let vs = volume_status(&cp, "disk1")?;
            (vs["phase"] == "Ready").then(|| vs["hotplugVolume"]["attachPodName"].as_str().unwrap().to_string())
        });
        // The agent may write a first verdict (True, NoDeviceInUse) between the pod's start
        // and virt-handler's mknod; the one that matters is the sole backer's False.
        agent.wait_until("disk1 ready and HandoffSafe False on the attachment pod", WAIT, |a| {
            volume_state(&a.report(), &launcher.1, "disk1").as_deref() == Some("ready")
                && handoff_condition(&cp, NS, &old).is_some_and(|(status, _)| status == "False")
        });
        let (status, reason) = handoff_condition(&cp, NS, &old).unwrap();
        t.say("agent", format!("disk1 ready; {old}: HandoffSafe {status} ({reason})"));
        assert_eq!((status.as_str(), reason.as_str()), ("False", "SoleBacker"), "the lone pod serving disk1");
        Scenario { t, agent, node, ctl, cp, launcher, old }
    }

    /// The user hotplugs disk2: the controller makes a second attachment pod for disk1 and
    /// disk2; returns its name once the kubelet runs it.
    fn hotplug_disk2(&self) -> String {
        virt_api_add_volume(&self.cp, "disk2");
        self.t.say("virt-api", "hotplug disk2");
        wait_for("the controller's second attachment pod, Running", WAIT, || {
            let pods = attachment_pods(&self.cp);
            let new = pods.iter().find(|p| p.metadata.name.as_deref() != Some(self.old.as_str()))?;
            let name = new.metadata.name.clone().unwrap();
            self.node.running_at(&name).map(|_| name)
        })
    }

    fn metrics(&self) -> String {
        self.cp.apiserver_metrics()
    }

    fn pod_exists(&self, pod: &str) -> bool {
        support::kubevirt::pod_exists(&self.cp, NS, pod)
    }

    fn disk1_vanished(&self) -> Option<f64> {
        let series = format!(
            "hotplug_watchdog_device_vanished_total{{pod_uid=\"{}\",volume=\"disk1\",namespace=\"{NS}\",vmi=\"{VM}\",pod=\"{}\"}}",
            self.launcher.1, self.launcher.0
        );
        metric_opt(&self.agent.metrics(), &series)
    }

    fn disk1_state(&self) -> Option<String> {
        volume_state(&self.agent.report(), &self.launcher.1, "disk1")
    }

    fn vmi_events(&self) -> BTreeMap<String, (i32, BTreeSet<String>)> {
        vmi_events(&self.cp)
    }

    fn print_events(&self) {
        print_events(&self.cp)
    }

    fn synchronized(&self) -> Option<(String, String, String)> {
        let vmi = self.cp.rt.block_on(vmi_api_in(&self.cp, NS).get(VM)).ok()?;
        let c = vmi.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Synchronized")?.clone();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        Some((s("status"), s("reason"), s("message")))
    }
}

/// Creates a core/v1 object (cluster-scoped kinds, or namespaced in the VM's namespace).
async fn create_core(cp: &ControlPlane, kind: &'static str, v: Value) {
    let (plural, namespaced) = match kind {
        "Node" => ("nodes", false),
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "PersistentVolumeClaim" => ("persistentvolumeclaims", true),
        other => panic!("create_core: {other}"),
    };
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", kind), plural);
    let api: Api<DynamicObject> =
        if namespaced { Api::namespaced_with(cp.admin.clone(), NS, &ar) } else { Api::all_with(cp.admin.clone(), &ar) };
    let obj: DynamicObject = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {kind}: {e}"));
}

/// The core/v1 Events on the VMI by reason: (summed count, messages).
fn vmi_events(cp: &ControlPlane) -> BTreeMap<String, (i32, BTreeSet<String>)> {
    let events: Api<Event> = Api::namespaced(cp.admin.clone(), NS);
    let mut out: BTreeMap<String, (i32, BTreeSet<String>)> = BTreeMap::new();
    for e in cp.rt.block_on(events.list(&ListParams::default())).unwrap().items {
        if e.involved_object.name.as_deref() != Some(VM) {
            continue;
        }
        let entry = out.entry(e.reason.unwrap_or_default()).or_default();
        entry.0 += e.count.unwrap_or(1);
        entry.1.insert(e.message.unwrap_or_default());
    }
    out
}

fn print_events(cp: &ControlPlane) {
    println!("  Events on VMI {VM}:");
    for (reason, (count, messages)) in vmi_events(cp) {
        println!("    {reason} x{count}: {}", messages.into_iter().collect::<Vec<_>>().join(" | "));
    }
}

/// DELETE requests on pods the API server answered with `code`.
fn pod_deletes(metrics: &str, code: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains("verb=\"DELETE\"") && l.contains("resource=\"pods\"") && l.contains(&format!("code=\"{code}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

// ------------------------------------------------------------------------ the scenarios

/// v1.9.0 as released, a new device per pod: the controller deletes the old attachment pod
/// as soon as the new one runs; its device goes; the agent reports disk1 vanished.
#[test]
fn released_deletes_the_old_pod_and_the_disk_vanishes() {
    if !require_root("released_deletes_the_old_pod_and_the_disk_vanishes") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.released, "released", Devices::PerPod, false, &[]);
    let new = s.hotplug_disk2();
    let running = s.node.running_at(&new).unwrap();
    let gone = wait_for("the old attachment pod deleted", WAIT, || s.node.gone_at(&s.old));
    s.t.say(
        "result",
        format!(
            "{} deleted {:.0} ms after {new} ran (100 ms polling)",
            s.old,
            gone.duration_since(running).as_secs_f64() * 1e3
        ),
    );
    s.agent.wait_volume(&s.launcher.1, "disk1", Some("vanished"));
    s.agent.wait_until("HotplugDeviceVanished on the VMI", WAIT, |_| {
        !support::kubevirt::vmi_events(&s.cp, "HotplugDeviceVanished").is_empty()
    });
    s.t.say("agent", format!("disk1 vanished; hotplug_watchdog_device_vanished_total {:?}", s.disk1_vanished()));
    s.print_events();
    let events = s.vmi_events();
    let deleted = events.get("SuccessfulDelete").expect("a SuccessfulDelete Event");
    assert!(deleted.1.contains(&format!("Deleted attachment pod {}", s.old)), "{deleted:?}");
    assert!(!s.pod_exists(&s.old));
    assert_eq!(s.disk1_vanished(), Some(1.0));
    assert!(s.pod_exists(&new), "the new attachment pod stays");
}

/// v1.9.0 as released with the handoff hold, a new device per pod: every DELETE is
/// refused, the disk survives, and the controller backs off instead of hot looping.
#[test]
fn released_with_hold_is_refused_and_backs_off() {
    if !require_root("released_with_hold_is_refused_and_backs_off") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.released, "released", Devices::PerPod, true, &[]);
    let before = controller::hold_checks(&s.metrics(), "deny");
    let new = s.hotplug_disk2();
    let running = s.node.running_at(&new).unwrap();
    // Sample the API server's refusal counter once a second for two minutes.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let failed_delete = |s: &Scenario| s.vmi_events().get("FailedDelete").map_or(0, |e| e.0);
    let mut failed_first_minute = None;
    let end = running + Duration::from_secs(120);
    while Instant::now() < end {
        let n = controller::hold_checks(&s.metrics(), "deny") - before;
        let t = Instant::now().duration_since(running).as_secs_f64();
        samples.push((t, n));
        if t >= 60.0 && failed_first_minute.is_none() {
            failed_first_minute = Some(failed_delete(&s));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let at = |secs: f64| samples.iter().rev().find(|(t, _)| *t <= secs).map_or(0.0, |(_, n)| *n);
    let first_minute = at(60.0);
    let second_minute = at(120.0) - at(60.0);
    // When each refusal happened (to the second): the counter's steps.
    let mut steps = Vec::new();
    let mut last = 0.0;
    for (t, n) in &samples {
        if *n > last {
            steps.push(format!("{t:.0}s:+{}", n - last));
            last = *n;
        }
    }
    s.t.say(
        "result",
        format!(
            "refused DELETEs of {}: {first_minute} in the first minute after {new} ran, {second_minute} in the second; at {}",
            s.old,
            steps.join(" ")
        ),
    );
    let events = s.vmi_events();
    s.print_events();
    let failed = events.get("FailedDelete").map_or(0, |e| e.0);
    let failed_first_minute = failed_first_minute.unwrap_or(failed);
    println!(
        "  FailedDelete Event count: {failed_first_minute} in the first minute, {} in the second",
        failed - failed_first_minute
    );
    println!("  Synchronized: {:?}", s.synchronized());
    for l in s.ctl.log_lines("hotplug-watchdog holds").iter().take(3) {
        println!("  virt-controller log: {l}");
    }
    println!("  virt-controller log lines naming the refusal: {}", s.ctl.log_lines("hotplug-watchdog holds").len());
    assert!(s.pod_exists(&s.old), "the hold keeps the old attachment pod");
    assert_eq!(s.disk1_state().as_deref(), Some("ready"), "disk1 survives");
    assert_eq!(s.disk1_vanished(), None);
    assert!(first_minute >= 1.0, "the controller tried to delete the old pod");
    assert!(second_minute < first_minute, "the controller backs off: {second_minute} refusals in the second minute");
    assert!(failed >= 1, "FailedDelete Events: {events:?}");
    assert!(failed - failed_first_minute < failed_first_minute, "the Events thin out as the DELETEs do");
    // v1.9.0's updateStatus patches a Running VMI and returns before CheckFailure: the
    // refusal never reaches the VMI's Synchronized condition, only the controller's log
    // ("reenqueuing VirtualMachineInstance", with the API server's message) and the
    // FailedDelete Event (which does not say why).
    assert_eq!(s.synchronized(), None, "no Synchronized condition on a Running VMI");
    let logged = s.ctl.log_lines("hotplug-watchdog holds attachment pod");
    assert!(logged.iter().any(|l| l.contains("reenqueuing VirtualMachineInstance")), "{logged:?}");
}

/// v1.9.0 as released with the handoff hold, one shared device: the agent sees the new pod
/// serve disk1's device, its condition turns True and the controller's next try deletes.
#[test]
fn released_with_hold_shared_device_proceeds() {
    if !require_root("released_with_hold_shared_device_proceeds") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.released, "released", Devices::Shared, true, &[]);
    let before = controller::hold_checks(&s.metrics(), "deny");
    // The agent writes a pod's condition at most once a second: a hotplug within a second of
    // its False would time that limit, not the controller (BENCHMARKS.md). In a cluster the
    // False was written long before.
    std::thread::sleep(Duration::from_secs(2));
    let new = s.hotplug_disk2();
    let running = s.node.running_at(&new).unwrap();
    let gone = wait_for("the old attachment pod deleted", WAIT, || s.node.gone_at(&s.old));
    let refused = controller::hold_checks(&s.metrics(), "deny") - before;
    s.t.say(
        "result",
        format!(
            "{} deleted {:.0} ms after {new} ran and its devices appeared ({refused} DELETEs refused before)",
            s.old,
            gone.duration_since(running).as_secs_f64() * 1e3
        ),
    );
    s.print_events();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!s.pod_exists(&s.old));
    assert_eq!(s.disk1_state().as_deref(), Some("ready"), "disk1's shared device stays");
    assert_eq!(s.disk1_vanished(), None);
}

/// v1.9.0 with the gate, a new device per pod: no DELETE is sent while the live agent says
/// False; the controller logs and records why.
#[test]
fn gated_holds_a_sole_backer() {
    if !require_root("gated_holds_a_sole_backer") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.gated, "gated", Devices::PerPod, false, &[]);
    let deletes_before = pod_deletes(&s.metrics(), "200");
    let new = s.hotplug_disk2();
    // Longer than the gate's ConditionWait (30 s), so a hold is not the wait's.
    std::thread::sleep(Duration::from_secs(45));
    let held = s.ctl.log_lines(&format!("Not deleting attachment pod {}", s.old));
    s.t.say("result", format!("after 45 s: {} kept; {} gate log lines", s.old, held.len()));
    for l in held.iter().take(2) {
        println!("  virt-controller log: {l}");
    }
    s.print_events();
    assert!(s.pod_exists(&s.old), "the gate keeps the old pod");
    assert!(s.pod_exists(&new));
    assert_eq!(pod_deletes(&s.metrics(), "200"), deletes_before, "no pod was deleted");
    assert!(held.iter().any(|l| l.contains("HandoffUnsafe") && l.contains("Alive")), "{held:?}");
    assert!(s.vmi_events().contains_key("HandoffUnsafe"), "a HandoffUnsafe Warning on the VMI");
    assert_eq!(s.disk1_state().as_deref(), Some("ready"));
    assert_eq!(s.disk1_vanished(), None);
}

/// v1.9.0 with the gate, a new device per pod, and the agent gone: the gate's table lets the
/// delete through once no live agent stands behind the False and the agent deadline (15 s
/// here, 5 min by default) has passed since the lease expired; the disk then goes.
#[test]
fn gated_releases_a_dead_agents_pod_after_the_deadline() {
    if !require_root("gated_releases_a_dead_agents_pod_after_the_deadline") {
        return;
    }
    let lane = lane();
    let s =
        Scenario::setup(&lane.gated, "gated", Devices::PerPod, false, &["--hotplug-watchdog-agent-deadline", "15s"]);
    let new = s.hotplug_disk2();
    wait_for("the gate holding the old pod (HandoffUnsafe)", WAIT, || {
        s.vmi_events().contains_key("HandoffUnsafe").then_some(())
    });
    s.t.say("virt-controller", format!("holds {} (HandoffUnsafe, agent lease Alive)", s.old));
    // No method of `s` after this: the agent is moved out to stop it.
    let Scenario { t, agent, node, ctl, cp, launcher, old } = s;
    let stopped = Instant::now();
    let status = agent.terminate();
    t.say("agent", format!("stopped ({status}): its Lease is no longer renewed"));
    let gone = wait_for("the old attachment pod deleted past the agent deadline", Duration::from_secs(150), || {
        node.gone_at(&old)
    });
    t.say(
        "result",
        format!(
            "{old} deleted {:.1} s after the agent stopped ({new} kept)",
            gone.duration_since(stopped).as_secs_f64()
        ),
    );
    for l in ctl.log_lines(&format!("Not deleting attachment pod {old}")).iter().rev().take(1) {
        println!("  virt-controller log (last hold): {l}");
    }
    print_events(&cp);
    let events = vmi_events(&cp);
    let anyway = events.get("AgentDeadlineExceeded").expect("an AgentDeadlineExceeded Warning");
    assert!(anyway.1.iter().any(|m| m.starts_with(&format!("Deleting attachment pod {old} anyway"))), "{anyway:?}");
    assert!(events.get("SuccessfulDelete").is_some_and(|e| e.1.contains(&format!("Deleted attachment pod {old}"))));
    assert!(support::kubevirt::pod_exists(&cp, NS, &new));
    // An agent started again finds the launcher's disk1 node pointing at a torn-down device.
    let agent = Agent::start_cluster(&node.tree.root, &cp.agent_kubeconfig(NODE), NODE, &["--log-level", "warn"]);
    agent.wait_volume(&launcher.1, "disk1", Some("vanished"));
    t.say("agent", "started again: disk1 vanished");
    // The order Scenario's fields drop in: the control plane last.
    drop((agent, node, ctl));
    drop(cp);
}

/// v1.9.0 with the gate, one shared device: held until the agent's condition turns True,
/// then deleted.
#[test]
fn gated_releases_a_shared_device() {
    if !require_root("gated_releases_a_shared_device") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.gated, "gated", Devices::Shared, false, &[]);
    // The agent writes a pod's condition at most once a second: a hotplug within a second of
    // its False would time that limit, not the controller (BENCHMARKS.md). In a cluster the
    // False was written long before.
    std::thread::sleep(Duration::from_secs(2));
    let new = s.hotplug_disk2();
    let running = s.node.running_at(&new).unwrap();
    let gone = wait_for("the old attachment pod deleted", WAIT, || s.node.gone_at(&s.old));
    s.t.say(
        "result",
        format!("{} deleted {:.0} ms after {new} ran", s.old, gone.duration_since(running).as_secs_f64() * 1e3),
    );
    let held = s.ctl.log_lines(&format!("Not deleting attachment pod {}", s.old));
    println!("  gate log lines before the delete: {}", held.len());
    for l in held.iter().take(1) {
        println!("  virt-controller log: {l}");
    }
    s.print_events();
    let events = s.vmi_events();
    assert!(!s.pod_exists(&s.old));
    let deleted = events.get("SuccessfulDelete").expect("a SuccessfulDelete Event");
    assert!(deleted.1.contains(&format!("Deleted attachment pod {}", s.old)), "{deleted:?}");
    // Allowed on the agent's True, not past a deadline or a wait (those warn "anyway").
    for reason in ["AgentDeadlineExceeded", "ConditionWaitExceeded"] {
        assert!(!events.contains_key(reason), "{reason}: {events:?}");
    }
    assert_eq!(s.disk1_state().as_deref(), Some("ready"));
    assert_eq!(s.disk1_vanished(), None);
}

/// The VM stops (the guest shuts down): the released controller, with the hold installed,
/// removes every attachment pod of the final VMI; nothing holds it for long and nothing is
/// reported lost.
#[test]
fn stopped_vm_attachment_pods_removed() {
    if !require_root("stopped_vm_attachment_pods_removed") {
        return;
    }
    let lane = lane();
    let s = Scenario::setup(&lane.released, "released", Devices::PerPod, true, &[]);
    let before = controller::hold_checks(&s.metrics(), "deny");
    let stop = Instant::now();
    s.node.shut_down_guest();
    s.t.say("user", "stop: the guest shuts down");
    let gone = wait_for("every attachment pod removed", WAIT, || attachment_pods(&s.cp).is_empty().then(Instant::now));
    let refused = controller::hold_checks(&s.metrics(), "deny") - before;
    s.t.say(
        "result",
        format!(
            "attachment pods gone {:.0} ms after the stop; {refused} DELETEs refused by the hold",
            gone.duration_since(stop).as_secs_f64() * 1e3
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    s.print_events();
    let vmi = s.cp.rt.block_on(vmi_api_in(&s.cp, NS).get(VM)).unwrap();
    assert_eq!(vmi.data["status"]["phase"], "Succeeded");
    assert!(!s.pod_exists(&s.old));
    assert_eq!(s.disk1_vanished(), None, "a stopped VM's disk is not lost");
}
