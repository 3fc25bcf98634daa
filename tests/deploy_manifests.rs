//! The deployment (deploy/, kustomize) and the image (Dockerfile), checked against the real
//! thing where there is one:
//! - `kubectl apply -k deploy/ --dry-run=server` on a real kube-apiserver with the
//!   Prometheus Operator's CRDs (tests/fixtures/prometheus-operator/) accepts every object,
//!   and refuses a copy with a ServiceMonitor field of the wrong type;
//! - applied for real, the DaemonSet read back from the API server keeps its safety
//!   properties (read-only host mounts, no capabilities, ...), a pod made from its template
//!   passes the namespace's admission (priority class, Pod Security), and the Service,
//!   ServiceMonitor and alerts agree on names, ports and labels;
//! - every environment variable the DaemonSet sets is one the agent reads (src/cli.rs);
//! - every shared library the agent binary links is in distroless/cc or copied into the
//!   runtime stage of the Dockerfile.
//!
//! The control plane and kubectl come from tools/control-plane/build.sh (the directory in
//! HOTPLUG_WATCHDOG_CONTROL_PLANE, or built on first use); without them the test fails, as
//! the other control-plane tests do. No root needed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use support::control_plane::ControlPlane;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const NS: &str = "hotplug-watchdog";
const NAME: &str = "hotplug-watchdog";
const SERVICEMONITOR_CRD: &str = "tests/fixtures/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml";
const PROMETHEUSRULE_CRD: &str = "tests/fixtures/prometheus-operator/monitoring.coreos.com_prometheusrules.yaml";
/// The capabilities the DaemonSet may add. None: daemonset.yaml says why each candidate
/// (DAC_READ_SEARCH, SYSLOG, SYS_PTRACE, NET_ADMIN) is not needed. Adding one means
/// documenting it there and here.
const ALLOWED_CAPABILITIES: &[&str] = &[];

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// kubectl as admin, with a private discovery cache (the API server's port is new each run).
fn kubectl(cp: &ControlPlane, cache: &Path, args: &[&str]) -> Output {
    Command::new(cp.kubectl())
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .output()
        .expect("run kubectl")
}

/// `kubectl apply -k <dir>`, retried for a while only if discovery does not know a kind
/// yet (a CRD that was just established).
fn apply_k(cp: &ControlPlane, cache: &Path, dir: &Path, extra: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dir = dir.display().to_string();
        let mut args = vec!["apply", "-k", dir.as_str()];
        args.extend_from_slice(extra);
        let out = kubectl(cp, cache, &args);
        let all = text(&out);
        if out.status.success() || !all.contains("no matches for kind") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kind.group/name` as kubectl prints them, for every object `kubectl kustomize` renders.
fn rendered_objects(cp: &ControlPlane, cache: &Path, dir: &Path) -> Vec<String> {
    let out = kubectl(cp, cache, &["kustomize", &dir.display().to_string()]);
    assert!(out.status.success(), "kubectl kustomize {}:\n{}", dir.display(), text(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_lowercase();
        let name = v["metadata"]["name"].as_str().unwrap();
        let api_version = v["apiVersion"].as_str().unwrap();
        objects.push(match api_version.split_once('/') {
            Some((group, _)) => format!("{kind}.{group}/{name}"),
            None => format!("{kind}/{name}"),
        });
    }
    objects
}

fn dynamic_api(cp: &ControlPlane, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(cp.admin.clone(), NS, &resource)
}

#[test]
fn deploy_applies_to_a_real_api_server_and_keeps_its_safety_properties() {
    let cp = ControlPlane::start();
    let cache = tempfile::tempdir().unwrap();
    let deploy = repo("deploy");
    for crd in [SERVICEMONITOR_CRD, PROMETHEUSRULE_CRD] {
        cp.install_crd(crd);
    }

    // Every object kustomize renders is accepted by the server (schemas, CRD validation,
    // admission), and named in kubectl's output. ControlPlane::start created the namespace,
    // ServiceAccount, RBAC and admission policy without kubectl, so kubectl warns that they
    // lack its last-applied annotation and says `configured` for them: expected here.
    let objects = rendered_objects(&cp, cache.path(), &deploy);
    for must in [
        "namespace/hotplug-watchdog",
        "serviceaccount/hotplug-watchdog",
        "clusterrole.rbac.authorization.k8s.io/hotplug-watchdog",
        "clusterrolebinding.rbac.authorization.k8s.io/hotplug-watchdog",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hotplug-watchdog-node-restriction",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hotplug-watchdog-node-restriction",
        "role.rbac.authorization.k8s.io/hotplug-watchdog-lease",
        "rolebinding.rbac.authorization.k8s.io/hotplug-watchdog-lease",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hotplug-watchdog-lease-restriction",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hotplug-watchdog-lease-restriction",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hotplug-watchdog-handoff-hold",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hotplug-watchdog-handoff-hold",
        "daemonset.apps/hotplug-watchdog",
        "service/hotplug-watchdog",
        "servicemonitor.monitoring.coreos.com/hotplug-watchdog",
        "prometheusrule.monitoring.coreos.com/hotplug-watchdog",
    ] {
        assert!(objects.iter().any(|o| o == must), "kustomize does not render {must}: {objects:?}");
    }
    let out = apply_k(&cp, cache.path(), &deploy, &["--dry-run=server"]);
    let said = text(&out);
    assert!(out.status.success(), "kubectl apply -k deploy/ --dry-run=server failed:\n{said}");
    eprintln!("kubectl apply -k deploy/ --dry-run=server:\n{said}");
    for object in &objects {
        let line = said.lines().find(|l| l.starts_with(&format!("{object} ")));
        assert!(
            line.is_some_and(|l| l.ends_with("(server dry run)")),
            "kubectl does not name {object} as dry-run applied:\n{said}"
        );
    }
    // A dry run creates nothing.
    let daemonsets: Api<DaemonSet> = Api::namespaced(cp.admin.clone(), NS);
    assert!(cp.rt.block_on(daemonsets.get_opt(NAME)).unwrap().is_none(), "--dry-run=server created the DaemonSet");

    // A broken copy: the server must refuse it (the check above can fail).
    let broken = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, broken.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let sm = broken.path().join("servicemonitor.yaml");
    let original = fs::read_to_string(&sm).unwrap();
    assert!(original.contains("- port: metrics"), "servicemonitor.yaml changed; update this test");
    // The endpoint's port is a string (a port name); an integer is the wrong type.
    fs::write(&sm, original.replace("- port: metrics", "- port: 9746")).unwrap();
    let out = apply_k(&cp, cache.path(), broken.path(), &["--dry-run=server"]);
    let said = text(&out);
    assert!(!out.status.success(), "the server accepted a ServiceMonitor with an integer port:\n{said}");
    assert!(said.contains("spec.endpoints[0].port"), "refused, but not for the broken field:\n{said}");
    eprintln!("the broken copy, refused:\n{said}");

    // Applied for real, then read back through the API.
    let out = apply_k(&cp, cache.path(), &deploy, &[]);
    assert!(out.status.success(), "kubectl apply -k deploy/ failed:\n{}", text(&out));
    let ds = cp.rt.block_on(daemonsets.get(NAME)).unwrap();
    let violations = daemonset_violations(&ds);
    assert!(violations.is_empty(), "the DaemonSet as stored breaks its safety properties:\n{}", violations.join("\n"));

    // A pod made from the template, as the DaemonSet controller would make it, passes
    // admission in the namespace: the priority class exists and may be used there, and
    // the namespace's Pod Security level allows hostPID and hostPath.
    let template = ds.spec.as_ref().unwrap().template.clone();
    let mut spec: PodSpec = template.spec.clone().unwrap();
    spec.node_name = Some("node-1".into());
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("hotplug-watchdog-test".into()),
            namespace: Some(NS.into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let admitted = cp.rt.block_on(pods.create(&dry_run, &pod)).unwrap_or_else(|e| panic!("pod refused: {e}"));
    let admitted = admitted.spec.unwrap();
    assert_eq!(admitted.priority_class_name.as_deref(), Some("system-node-critical"));
    // The API server's built-in class: its value resolved into the pod.
    assert_eq!(admitted.priority, Some(2_000_001_000), "priority not resolved");

    // The Service selects the DaemonSet's pods and exposes its metrics port by name.
    let svc = cp.rt.block_on(Api::<Service>::namespaced(cp.admin.clone(), NS).get(NAME)).unwrap();
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    let svc_spec = svc.spec.unwrap();
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"), "the Service must be headless");
    assert_eq!(svc_spec.publish_not_ready_addresses, Some(true));
    let pod_labels = template.metadata.unwrap().labels.unwrap_or_default();
    let selector = svc_spec.selector.unwrap_or_default();
    assert!(!selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "{selector:?}");
    let svc_port = svc_spec.ports.unwrap().into_iter().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
    assert_eq!(svc_port.port, 9746);
    let container = &ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let container_port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
    assert_eq!(container_port.container_port, 9746);
    assert_eq!(
        svc_port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()))
    );

    // The ServiceMonitor selects that Service and port, keeps the agent's own labels,
    // adds `node`, and leaves job to be the Service's name.
    let sm = cp.rt.block_on(dynamic_api(&cp, "monitoring.coreos.com", "v1", "ServiceMonitor").get(NAME)).unwrap();
    let spec = &sm.data["spec"];
    let match_labels = spec["selector"]["matchLabels"].as_object().unwrap();
    assert!(
        !match_labels.is_empty()
            && match_labels.iter().all(|(k, v)| svc_labels.get(k).map(String::as_str) == v.as_str()),
        "ServiceMonitor selector {match_labels:?} does not match the Service's labels {svc_labels:?}"
    );
    assert!(spec.get("jobLabel").is_none(), "job must stay the Service's name ({NAME}): the alerts use it");
    let endpoint = &spec["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(endpoint["honorLabels"], true, "the agent's namespace/pod labels must win over the target's");
    let node_label = endpoint["relabelings"].as_array().unwrap().iter().any(|r| {
        r["sourceLabels"] == serde_json::json!(["__meta_kubernetes_pod_node_name"])
            && r["targetLabel"] == "node"
            && r.get("action").is_none_or(|a| a.as_str().is_some_and(|a| a.eq_ignore_ascii_case("replace")))
    });
    assert!(node_label, "no relabeling copies __meta_kubernetes_pod_node_name into node: {endpoint}");

    // The alerts select the series of that job.
    let rule = cp.rt.block_on(dynamic_api(&cp, "monitoring.coreos.com", "v1", "PrometheusRule").get(NAME)).unwrap();
    let exprs: Vec<String> = rule.data["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    assert!(!exprs.is_empty(), "the PrometheusRule has no rules");
    for expr in &exprs {
        for (i, _) in expr.match_indices("job=") {
            assert!(expr[i..].starts_with(&format!("job=\"{NAME}\"")), "an alert selects another job: {expr}");
        }
    }
}

/// Everything the DaemonSet promises about privileges, as a list of what is broken.
fn daemonset_violations(ds: &DaemonSet) -> Vec<String> {
    let mut v = Vec::new();
    let Some(pod) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return vec!["no pod template".into()];
    };
    if ds.metadata.namespace.as_deref() != Some(NS) {
        v.push(format!("namespace {:?}, not {NS}", ds.metadata.namespace));
    }
    if pod.host_pid != Some(true) {
        v.push("hostPID must be true (the host's /proc/1/mountinfo)".into());
    }
    if pod.host_network == Some(true) || pod.host_ipc == Some(true) {
        v.push("no host network or IPC namespace".into());
    }
    if pod.priority_class_name.as_deref() != Some("system-node-critical") {
        v.push(format!("priorityClassName {:?}", pod.priority_class_name));
    }
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none() && t.value.is_none()
        });
    if !tolerates_all {
        v.push(format!("no toleration `operator: Exists` for every taint: {:?}", pod.tolerations));
    }
    if pod.automount_service_account_token == Some(false) || pod.service_account_name.as_deref() != Some(NAME) {
        v.push("runs as ServiceAccount hotplug-watchdog with its token".into());
    }
    let pod_seccomp = pod.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()).map(|p| p.type_.clone());
    let pod_uid = pod.security_context.as_ref().and_then(|s| s.run_as_user);
    let host_paths: BTreeMap<&str, &str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|vol| vol.host_path.as_ref().map(|h| (vol.name.as_str(), h.path.as_str())))
        .collect();
    if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        v.push("no init containers (each would need the same review)".into());
    }
    for c in &pod.containers {
        let name = &c.name;
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{name}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        if sc.read_only_root_filesystem != Some(true) {
            v.push(format!("{name}: readOnlyRootFilesystem must be true"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            v.push(format!("{name}: capabilities must drop ALL"));
        }
        for cap in caps.add.iter().flatten() {
            if !ALLOWED_CAPABILITIES.contains(&cap.trim_start_matches("CAP_")) {
                v.push(format!("{name}: adds capability {cap}"));
            }
        }
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.clone()).or(pod_seccomp.clone());
        if seccomp.as_deref() != Some("RuntimeDefault") {
            v.push(format!("{name}: seccompProfile {seccomp:?}, not RuntimeDefault"));
        }
        if sc.run_as_user.or(pod_uid).is_none_or(|uid| uid == 0) {
            v.push(format!("{name}: runs as uid 0 (or an image default)"));
        }
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = host_paths.get(m.name.as_str()) else { continue };
            if m.read_only != Some(true) {
                v.push(format!("{name}: hostPath {host} mounted writable at {}", m.mount_path));
            }
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                v.push(format!("{name}: hostPath {host} with Bidirectional propagation"));
            }
            if *host == "/var/lib/kubelet/pods" && m.mount_propagation.as_deref() != Some("HostToContainer") {
                v.push(format!("{name}: the kubelet pods directory needs mountPropagation HostToContainer"));
            }
        }
        if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
            v.push(format!("{name}: volumeDevices"));
        }
        let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> =
            c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
        let node_from_api = env.get("NODE_NAME").and_then(|e| e.value_from.as_ref()).and_then(|f| f.field_ref.as_ref());
        if node_from_api.map(|f| f.field_path.as_str()) != Some("spec.nodeName") {
            v.push(format!("{name}: NODE_NAME must come from fieldRef spec.nodeName"));
        }
        // The lease: in the agent's own namespace, held by this pod.
        for (var, path) in [("HOTPLUG_WATCHDOG_LEASE_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")] {
            let from = env.get(var).and_then(|e| e.value_from.as_ref()).and_then(|f| f.field_ref.as_ref());
            if from.map(|f| f.field_path.as_str()) != Some(path) {
                v.push(format!("{name}: {var} must come from fieldRef {path}"));
            }
        }
        let value = |k: &str| env.get(k).and_then(|e| e.value.clone());
        // The kubelet root: mounted where the agent looks, named as the host names it.
        let kubelet_mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| host_paths.get(m.name.as_str()) == Some(&"/var/lib/kubelet/pods"));
        match kubelet_mount {
            None => v.push(format!("{name}: the kubelet pods directory is not mounted")),
            Some(m) => {
                if value("HOTPLUG_WATCHDOG_KUBELET_ROOT").as_deref() != Some(m.mount_path.as_str()) {
                    v.push(format!("{name}: HOTPLUG_WATCHDOG_KUBELET_ROOT is not {}", m.mount_path));
                }
                if value("HOTPLUG_WATCHDOG_MOUNTINFO_KUBELET_ROOT").as_deref() != Some("/var/lib/kubelet/pods") {
                    v.push(format!("{name}: HOTPLUG_WATCHDOG_MOUNTINFO_KUBELET_ROOT must be the host path"));
                }
            }
        }
        let http_path = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
            p.and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone()).unwrap_or_default()
        };
        if http_path(c.liveness_probe.as_ref()) != "/healthz" {
            v.push(format!("{name}: livenessProbe must GET /healthz"));
        }
        if http_path(c.readiness_probe.as_ref()) != "/readyz" {
            v.push(format!("{name}: readinessProbe must GET /readyz"));
        }
        if c.startup_probe.is_none() {
            v.push(format!("{name}: no startupProbe"));
        }
        if c.args.as_deref() != Some(&["run".to_string()][..]) {
            v.push(format!("{name}: args must be [run], not {:?}", c.args));
        }
        if c.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get("memory")).is_none() {
            v.push(format!("{name}: no memory limit"));
        }
    }
    v
}

/// The environment variables src/cli.rs reads (`env = "..."`).
fn agent_env_vars() -> BTreeSet<String> {
    let cli = fs::read_to_string(repo("src/cli.rs")).unwrap();
    cli.split("env = \"").skip(1).map(|rest| rest.split('"').next().unwrap().to_string()).collect()
}

fn daemonset_from_file() -> DaemonSet {
    let text = fs::read_to_string(repo("deploy/daemonset.yaml")).unwrap();
    serde_yaml::from_str(&text).expect("deploy/daemonset.yaml is one DaemonSet")
}

#[test]
fn daemonset_sets_only_variables_the_agent_reads() {
    let known = agent_env_vars();
    assert!(known.contains("NODE_NAME") && known.contains("HOTPLUG_WATCHDOG_KUBELET_ROOT"), "{known:?}");
    let ds = daemonset_from_file();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    for c in pod.containers {
        for e in c.env.unwrap_or_default() {
            assert!(known.contains(&e.name), "{}: {} is not a variable the agent reads (src/cli.rs)", c.name, e.name);
        }
    }
}

#[test]
fn safety_checks_catch_an_unsafe_daemonset() {
    let ds = daemonset_from_file();
    assert_eq!(daemonset_violations(&ds), Vec::<String>::new(), "deploy/daemonset.yaml itself");
    let mut bad = ds.clone();
    let pod = bad.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    let c = &mut pod.containers[0];
    c.volume_mounts.as_mut().unwrap()[0].read_only = Some(false);
    c.volume_mounts.as_mut().unwrap()[0].mount_propagation = None;
    let sc = c.security_context.as_mut().unwrap();
    sc.capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()]);
    sc.read_only_root_filesystem = None;
    pod.tolerations = None;
    let found = daemonset_violations(&bad).join("\n");
    for expected in [
        "mounted writable",
        "HostToContainer",
        "adds capability SYS_ADMIN",
        "readOnlyRootFilesystem",
        "operator: Exists",
    ] {
        assert!(found.contains(expected), "no violation {expected:?} in:\n{found}");
    }
}

// ---------------------------------------------------------------- the image

/// Libraries of distroless/cc-debian12 (glibc, libgcc) and the kernel's vDSO.
const IN_DISTROLESS_CC: &[&str] = &[
    "linux-vdso.so.1",
    "linux-gate.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
];

/// The sonames `ldd` lists (the dynamic loader by its file name).
fn ldd_sonames(ldd_output: &str) -> Vec<String> {
    ldd_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|first| Path::new(first).file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// What the runtime image would lack: every linked library that is neither in
/// distroless/cc nor copied into the Dockerfile's last stage under a library directory
/// the dynamic loader searches by default.
fn missing_from_image(sonames: &[String], dockerfile: &str) -> Vec<String> {
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM line");
    let copies: Vec<&str> = lines[last_from..].iter().copied().filter(|l| l.starts_with("COPY ")).collect();
    let default_dirs = ["/lib/", "/usr/lib/", "/lib64/", "/usr/lib64/"];
    sonames
        .iter()
        .filter(|s| !s.starts_with("ld-linux") && !IN_DISTROLESS_CC.contains(&s.as_str()))
        .filter(|s| {
            !copies.iter().any(|c| {
                let dest = c.split_whitespace().last().unwrap_or("");
                c.contains(s.as_str()) && default_dirs.iter().any(|d| dest.starts_with(d))
            })
        })
        .cloned()
        .collect()
}

#[test]
fn runtime_image_has_every_shared_library_the_agent_links() {
    let dockerfile = fs::read_to_string(repo("Dockerfile")).unwrap();
    let from: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    assert!(from[0].contains("rust:") && from[0].contains("-bookworm"), "{}", from[0]);
    // IN_DISTROLESS_CC is what this base image has.
    assert!(from[1].starts_with("FROM gcr.io/distroless/cc-debian12"), "{}", from[1]);
    assert!(dockerfile.contains("ENTRYPOINT [\"/hotplug-watchdog\"]") && dockerfile.contains("CMD [\"run\"]"));
    assert!(dockerfile.contains("--locked"), "the image must build from Cargo.lock");

    // The debug binary links the same libraries as the release one (no feature differs).
    let bin = env!("CARGO_BIN_EXE_hotplug-watchdog");
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    assert!(out.status.success(), "ldd {bin}: {}", text(&out));
    let sonames = ldd_sonames(&String::from_utf8(out.stdout).unwrap());
    assert!(sonames.iter().any(|s| s == "libc.so.6"), "not a dynamic glibc binary? {sonames:?}");
    assert_eq!(missing_from_image(&sonames, &dockerfile), Vec::<String>::new(), "ldd lists {sonames:?}");
    // The build stage lets every such library through its own ldd check.
    for lib in sonames.iter().filter(|s| !s.starts_with("ld-linux") && !IN_DISTROLESS_CC.contains(&s.as_str())) {
        let escaped = lib.replace('.', "\\.");
        assert!(dockerfile.contains(&escaped), "the build stage's ldd check would refuse {lib}");
    }
}

#[test]
fn library_check_catches_a_missing_library() {
    let dockerfile = fs::read_to_string(repo("Dockerfile")).unwrap();
    let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
               \tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f13)\n\
               \tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f14)\n\
               \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f15)\n\
               \t/lib64/ld-linux-x86-64.so.2 (0x00007f16)\n";
    assert_eq!(missing_from_image(&ldd_sonames(ldd), &dockerfile), vec!["libssl.so.3".to_string()]);
    // A COPY in the build stage does not count, nor one to a directory not searched.
    let build_stage_only =
        "FROM rust AS build\nCOPY --from=x /libudev.so.1 /usr/lib/libudev.so.1\nFROM gcr.io/distroless/cc-debian12\n";
    assert_eq!(missing_from_image(&ldd_sonames(ldd), build_stage_only), vec!["libudev.so.1", "libssl.so.3"]);
    let elsewhere = "FROM gcr.io/distroless/cc-debian12\nCOPY --from=build /out/libudev.so.1 /opt/libudev.so.1\n";
    assert_eq!(missing_from_image(&ldd_sonames(ldd), elsewhere), vec!["libudev.so.1", "libssl.so.3"]);
}
