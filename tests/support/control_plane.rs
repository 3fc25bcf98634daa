//! A real control plane for tests: etcd and kube-apiserver built from Go modules by
//! `tools/control-plane/build.sh`, started on free loopback ports with a test CA (the way
//! envtest does it), with the KubeVirt VMI CRD and the agent's RBAC from `deploy/`
//! installed. Killed, and its directory removed, on drop, even when a test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The agent's identity, as `deploy/serviceaccount.yaml` names it.
pub const AGENT_USER: &str = "system:serviceaccount:hotplug-watchdog:hotplug-watchdog";

/// Where build.sh put the binaries (it builds them on first use; later calls are instant).
fn binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("HOTPLUG_WATCHDOG_CONTROL_PLANE") {
        return PathBuf::from(dir);
    }
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("tools/control-plane/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tools/control-plane/build.sh");
    assert!(out.status.success(), "tools/control-plane/build.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().expect("build.sh prints the directory").trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, the API server's serving certificate, an admin client certificate
/// (system:masters) and the service-account signing key.
fn make_pki(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            days[0],
            days[1],
        ],
    );
    fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subj, ext) in
        [("server", "/CN=kube-apiserver", "server.ext"), ("admin", "/O=system:masters/CN=admin", "client.ext")]
    {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subj,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.crt"),
                days[0],
                days[1],
            ],
        );
    }
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_url: String,
    /// Whether the API server runs the ServiceAccount admission plugin (off by default).
    service_account_admission: bool,
    pub port: u16,
    pub rt: tokio::runtime::Runtime,
    pub admin: Client,
}

impl ControlPlane {
    /// The process IDs of etcd and the API server (the benchmark reads their CPU time).
    #[allow(dead_code)]
    pub fn pids(&self) -> Vec<u32> {
        self.etcd.iter().chain(&self.apiserver).map(Child::id).collect()
    }

    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With the ServiceAccount admission plugin on, as a real cluster runs it: a pod that
    /// does not opt out gets the projected token volume (`kube-api-access-*`), which
    /// KubeVirt's controller counts on when it compares an attachment pod's volumes with
    /// the VMI's ("-2" in `podVolumesMatchesReadyVolumes`). The plugin refuses a pod whose
    /// ServiceAccount does not exist: whoever creates pods in a namespace first creates its
    /// `default` ServiceAccount, as kube-controller-manager would.
    pub fn start_with_service_account_admission() -> Self {
        Self::start_with(true)
    }

    fn start_with(service_account_admission: bool) -> Self {
        let bin = binaries();
        let dir = tempfile::tempdir().unwrap();
        make_pki(&dir.path().join("pki"));
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(bin.join("etcd"))
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--unsafe-no-fsync=true")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let port = free_port();
        let kubeconfig = write_kubeconfig(dir.path(), port, None);
        let admin = rt.block_on(client_from(&kubeconfig));
        let mut cp = ControlPlane {
            dir,
            bin,
            etcd: Some(etcd),
            apiserver: None,
            etcd_url,
            service_account_admission,
            port,
            rt,
            admin,
        };
        cp.start_apiserver();
        cp.install_fixtures();
        cp
    }

    fn pki(&self, f: &str) -> String {
        self.dir.path().join("pki").join(f).display().to_string()
    }

    /// Starts (or restarts) the API server on the same port, over the same etcd.
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("apiserver.log")).unwrap();
        let child = Command::new(self.bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--cert-dir={}", self.dir.path().join("certs").display()))
            .arg(format!("--tls-cert-file={}", self.pki("server.crt")))
            .arg(format!("--tls-private-key-file={}", self.pki("server.key")))
            .arg(format!("--secure-port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"])
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true", "--authorization-mode=RBAC"])
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", self.pki("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", self.pki("sa.key")))
            .arg(format!("--client-ca-file={}", self.pki("ca.crt")))
            .args((!self.service_account_admission).then_some("--disable-admission-plugins=ServiceAccount"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        self.wait_ready();
    }

    /// Kills the API server (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ok = self.rt.block_on(async {
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                self.admin.request_text(req).await.is_ok_and(|t| t.trim() == "ok")
            });
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.apiserver.as_mut().map(|c| c.try_wait()) {
                panic!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "kube-apiserver not ready in 90 s:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default();
        log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn install_fixtures(&self) {
        self.rt.block_on(async {
            let crd: CustomResourceDefinition =
                yaml(&Path::new(REPO).join("tools/control-plane/fixtures/kubevirt-vmi-crd.yaml"));
            let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
            crds.create(&PostParams::default(), &crd).await.expect("create VMI CRD");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let c = crds.get("virtualmachineinstances.kubevirt.io").await.unwrap();
                let established = c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(Instant::now() < deadline, "VMI CRD not established");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let pp = PostParams::default();
            Api::<Namespace>::all(self.admin.clone())
                .create(&pp, &yaml(&Path::new(REPO).join("deploy/namespace.yaml")))
                .await
                .unwrap();
            Api::<ServiceAccount>::namespaced(self.admin.clone(), "hotplug-watchdog")
                .create(&pp, &yaml(&Path::new(REPO).join("deploy/serviceaccount.yaml")))
                .await
                .unwrap();
            for file in ["deploy/rbac.yaml", "deploy/admission-policy.yaml"] {
                self.apply(file).await;
            }
            // Admission policies take effect once the API server has loaded them.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
    }

    /// Creates every object of a YAML file of the repository (RBAC and admission kinds).
    pub async fn apply(&self, file: &str) {
        let pp = PostParams::default();
        let text = fs::read_to_string(Path::new(REPO).join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            let admin = self.admin.clone();
            match value["kind"].as_str() {
                Some("ClusterRole") => {
                    Api::<ClusterRole>::all(admin).create(&pp, &serde_yaml::from_value(value).unwrap()).await.unwrap();
                }
                Some("ClusterRoleBinding") => {
                    let b: ClusterRoleBinding = serde_yaml::from_value(value).unwrap();
                    Api::<ClusterRoleBinding>::all(admin).create(&pp, &b).await.unwrap();
                }
                Some("Role") => {
                    let r: Role = serde_yaml::from_value(value).unwrap();
                    let ns = r.metadata.namespace.clone().expect("a Role in deploy/ names its namespace");
                    Api::<Role>::namespaced(admin, &ns).create(&pp, &r).await.unwrap();
                }
                Some("RoleBinding") => {
                    let b: RoleBinding = serde_yaml::from_value(value).unwrap();
                    let ns = b.metadata.namespace.clone().expect("a RoleBinding in deploy/ names its namespace");
                    Api::<RoleBinding>::namespaced(admin, &ns).create(&pp, &b).await.unwrap();
                }
                Some("ValidatingAdmissionPolicy") => {
                    let p: ValidatingAdmissionPolicy = serde_yaml::from_value(value).unwrap();
                    Api::<ValidatingAdmissionPolicy>::all(admin).create(&pp, &p).await.unwrap();
                }
                Some("ValidatingAdmissionPolicyBinding") => {
                    let b: ValidatingAdmissionPolicyBinding = serde_yaml::from_value(value).unwrap();
                    Api::<ValidatingAdmissionPolicyBinding>::all(admin).create(&pp, &b).await.unwrap();
                }
                other => panic!("unexpected kind {other:?} in {file}"),
            }
        }
    }

    /// A kubeconfig that authenticates as admin and acts as the agent's ServiceAccount on
    /// `node` (impersonation, with the node-name extra a bound token would carry): the
    /// agent gets exactly the permissions of `deploy/`.
    pub fn agent_kubeconfig(&self, node: &str) -> PathBuf {
        write_kubeconfig(self.dir.path(), self.port, Some(node))
    }

    /// A client acting as the agent's ServiceAccount, but with a token that names no node
    /// (no node-name extra): what admission must refuse everything.
    pub fn agent_client_without_node(&self) -> Client {
        let path = self.agent_kubeconfig("none");
        let text = fs::read_to_string(&path).unwrap();
        let without =
            text.replace("    as-user-extra:\n      authentication.kubernetes.io/node-name: [\"none\"]\n", "");
        assert_ne!(text, without, "the kubeconfig names the node-name extra");
        let path = path.with_file_name("agent-without-node.kubeconfig");
        fs::write(&path, without).unwrap();
        self.rt.block_on(client_from(&path))
    }

    /// A client acting as the agent, for tests of what its role allows.
    pub fn agent_client(&self, node: &str) -> Client {
        let path = self.agent_kubeconfig(node);
        self.rt.block_on(client_from(&path))
    }

    /// A client that authenticates as admin and acts as `user` (impersonation). For a
    /// service account (`system:serviceaccount:<ns>:<name>`) the API server adds its groups
    /// (`system:serviceaccounts`, `system:serviceaccounts:<ns>`) as a token would.
    pub fn client_as(&self, user: &str) -> Client {
        let path = self.admin_kubeconfig();
        self.rt.block_on(async {
            let kc = Kubeconfig::read_from(&path).unwrap();
            let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
            config.auth_info.impersonate = Some(user.to_string());
            Client::try_from(config).unwrap()
        })
    }

    /// The API server's own metrics (`GET /metrics` as admin), Prometheus text.
    pub fn apiserver_metrics(&self) -> String {
        self.rt.block_on(async {
            let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
            self.admin.request_text(req).await.expect("GET /metrics")
        })
    }

    /// The control plane's temp directory (its logs, kubeconfigs and PKI live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig that authenticates as admin and acts as `user` (impersonation), for a
    /// program of its own such as KubeVirt's virt-controller.
    pub fn kubeconfig_as(&self, user: &str, file: &str) -> PathBuf {
        let admin = fs::read_to_string(self.admin_kubeconfig()).unwrap();
        let key = format!("    client-key: {}\n", self.pki("admin.key"));
        assert!(admin.contains(&key), "the admin kubeconfig names its client key");
        let text = admin.replace(&key, &format!("{key}    as: {user}\n"));
        let path = self.dir.path().join(file);
        fs::write(&path, text).unwrap();
        path
    }

    /// The admin (system:masters) kubeconfig, for kubectl.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// kubectl of the same Kubernetes release, built by build.sh next to kube-apiserver.
    pub fn kubectl(&self) -> PathBuf {
        let path = self.bin.join("kubectl");
        assert!(
            path.is_file(),
            "{} missing: the control plane in {} predates kubectl; run tools/control-plane/build.sh",
            path.display(),
            self.bin.display()
        );
        path
    }

    /// Creates a CustomResourceDefinition from a file of the repository and waits until
    /// the API server serves it (Established); returns its name.
    pub fn install_crd(&self, file: &str) -> String {
        let crd: CustomResourceDefinition = yaml(&Path::new(REPO).join(file));
        let name = crd.metadata.name.clone().expect("a CRD has a name");
        self.rt.block_on(async {
            let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
            crds.create(&PostParams::default(), &crd).await.unwrap_or_else(|e| panic!("create CRD {file}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let c = crds.get(&name).await.unwrap();
                let conditions = c.status.and_then(|s| s.conditions).unwrap_or_default();
                if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                    break;
                }
                assert!(Instant::now() < deadline, "CRD {name} not established in 30 s: {conditions:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        name
    }
}

use serde::Deserialize;

fn yaml<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_kubeconfig(dir: &Path, port: u16, as_agent_on: Option<&str>) -> PathBuf {
    let pki = dir.join("pki");
    let impersonation = match as_agent_on {
        Some(node) => format!(
            "    as: {AGENT_USER}\n    as-user-extra:\n      authentication.kubernetes.io/node-name: [\"{node}\"]\n"
        ),
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n{impersonation}contexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
        ca = pki.join("ca.crt").display(),
        crt = pki.join("admin.crt").display(),
        key = pki.join("admin.key").display(),
    );
    let name = match as_agent_on {
        Some(node) => format!("agent-{node}.kubeconfig"),
        None => "admin.kubeconfig".into(),
    };
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
