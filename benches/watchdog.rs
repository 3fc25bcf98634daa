//! The benchmark (issues #7, #16): detection latency, start-up, footprint, API load and an
//! event storm, side by side with what people deploy today: node-problem-detector running
//! a polling custom plugin. A program, not a test: it prints figures and asserts nothing
//! about time.
//!
//!   sudo scripts/bench                 # what BENCHMARKS.md reports: 5 runs, medians
//!   cargo bench --bench watchdog -- --runs 1 --sizes 100 --idle 10   # a quick look
//!     (needs HOTPLUG_WATCHDOG_CONTROL_PLANE and HOTPLUG_WATCHDOG_NPD, which scripts/bench sets)
//!   ... --before OLDER-BINARY          # an older agent measured in the same run, alternating
//!
//! Everything is real: loop devices made and removed through /dev/loop-control, a temp
//! kubelet tree with the nodes virt-handler makes, the agent binary (release build) in
//! cluster mode on a real kube-apiserver + etcd with one VMI, launcher pod and attachment
//! pod per ten volumes. Root is required.
//!
//! Per size (hotplug volumes on the node), in order:
//! 1. start-up: the agent's spawn to `/readyz` answering 200 (first full scan, watches in
//!    sync), polled over one kept-alive connection once etcd and the API server are quiet,
//!    and the CPU time the agent and they spent until then; then the API requests it made
//!    to settle (conditions on every attachment pod). With `--restarts N`, after phase 4
//!    each binary starts N more times on the warm node (see `restarts`);
//! 2. idle: CPU time and context switches of all its threads, and its API requests, over
//!    the idle window (default 60 s) with nothing happening;
//! 3. detection: removals one after another; each is timed from `LOOP_CTL_REMOVE` returning
//!    to (a) the `vanished` line reaching a `/watch` client and (b) the attachment pod's
//!    `DevicesPresent` condition naming the device, seen through an API watch. The volume
//!    is then put back with a new device and the next removal waits until it is ready;
//! 4. peak RSS (VmHWM) after all that, and what the RSS is made of then: anonymous memory
//!    (heap) and file-backed pages (the binary's code, shared with the page cache);
//! 5. baseline: the agent stopped, the real node-problem-detector (standalone, no API
//!    server) running benches/baseline/check-hotplug-devices.sh as a custom plugin with
//!    benches/baseline/hotplug-device-monitor.json, one NPD every 1 s and one every 30 s at
//!    once, while devices are removed at random moments; each removal is timed to NPD's
//!    report (its log) of the first plugin run it started after the removal. CPU and
//!    context switches of NPD and its plugin runs (wait4 of NPD) over its life, per 60 s,
//!    and NPD's peak RSS;
//! 6. storm (one size, default 1,000): a fresh agent with default buffers, then a burst of
//!    device add/remove uevents from many threads (new devices added and removed, and
//!    some of the volumes' devices removed); when the agent is quiet its `/scan` is compared
//!    with a fresh `hotplug-watchdog scan` of the same node: mismatches are counted.
//!
//! With `--before`, phases 1-4 and 6 run for both binaries on the same node, in columns
//! "<size> before" and "<size>" ("storm before", "storm").

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use hotplug_watchdog::device::DevNum;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

use support::control_plane::ControlPlane;
use support::{agent_binary, http_get, loop_control, KubeletTree, WatchStream, LOOP_CTL_ADD, LOOP_CTL_REMOVE};

const VOLUMES_PER_VMI: usize = 10;
const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ options

struct Options {
    runs: usize,
    /// An older agent binary measured in the same run, alternating with the current one.
    before: Option<PathBuf>,
    /// The node-problem-detector binary of the baseline (tools/node-problem-detector/build.sh).
    npd: Option<PathBuf>,
    sizes: Vec<usize>,
    removals: usize,
    idle: Duration,
    baseline_window: Duration,
    storm_size: usize,
    storm_events: usize,
    /// Start-ups again on the warm node, per binary, after the agent phases.
    restarts: usize,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options {
            runs: 1,
            before: None,
            npd: std::env::var_os("HOTPLUG_WATCHDOG_NPD").map(PathBuf::from),
            sizes: vec![100, 1000, 5000],
            removals: 200,
            idle: Duration::from_secs(60),
            baseline_window: Duration::from_secs(90),
            storm_size: 1000,
            storm_events: 10_000,
            restarts: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
            let num = |s: String| s.parse::<usize>().unwrap_or_else(|_| usage(&format!("{s:?} is not a number")));
            match a.as_str() {
                "--runs" => o.runs = num(value()),
                "--before" => o.before = Some(PathBuf::from(value())),
                "--npd" => o.npd = Some(PathBuf::from(value())),
                "--sizes" => o.sizes = value().split(',').map(|s| num(s.to_string())).collect(),
                "--removals" => o.removals = num(value()),
                "--idle" => o.idle = Duration::from_secs(num(value()) as u64),
                "--baseline-window" => o.baseline_window = Duration::from_secs(num(value()) as u64),
                "--storm-size" => o.storm_size = num(value()),
                "--storm-events" => o.storm_events = num(value()),
                "--restarts" => o.restarts = num(value()),
                // cargo bench passes --bench.
                "--bench" => {}
                _ => usage(&format!("unknown argument {a}")),
            }
        }
        o
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "{why}\nusage: watchdog [--runs N] [--sizes 100,1000,5000] [--removals 200] [--idle SECONDS] \
         [--baseline-window SECONDS] [--storm-size N (0: none)] [--storm-events N] [--restarts N] [--before OLDER-AGENT-BINARY] \
         [--npd NODE-PROBLEM-DETECTOR (default $HOTPLUG_WATCHDOG_NPD)]"
    );
    std::process::exit(2)
}

// ------------------------------------------------------------------ loop devices

/// Loop numbers far above what the tests use; the kernel allows minors up to 2^20.
static NEXT_LOOP: AtomicU32 = AtomicU32::new(800_000);

/// A new loop device: its index (major 7, minor = index).
fn loop_add() -> u32 {
    loop {
        let index = NEXT_LOOP.fetch_add(1, Ordering::SeqCst);
        assert!(index < 1 << 20, "out of loop minors");
        match loop_control(LOOP_CTL_ADD, index) {
            Ok(_) => return index,
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => panic!("LOOP_CTL_ADD {index}: {e}"),
        }
    }
}

fn loop_remove(index: u32) {
    for _ in 0..500 {
        match loop_control(LOOP_CTL_REMOVE, index) {
            Ok(_) | Err(nix::errno::Errno::ENODEV) => return,
            // Something (blkid, udev) has it open for a moment.
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("LOOP_CTL_REMOVE {index}: {e}"),
        }
    }
    panic!("LOOP_CTL_REMOVE {index}: still busy");
}

/// The kernel waits for an RCU grace period in every removal (~45 ms here), so removals
/// of many devices go on many threads.
fn parallel<T: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) + Sync) {
    let queue = std::sync::Mutex::new(items);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some(item) = queue.lock().unwrap().pop() else { return };
                f(item);
            });
        }
    });
}

// ------------------------------------------------------------------ the node

struct Vm {
    launcher_uid: String,
    attachment_uid: String,
    attachment_name: String,
}

struct Volume {
    vm: usize,
    name: String,
    loop_index: u32,
    present: bool,
}

/// One size's node: its API objects, its kubelet tree and loop devices.
struct Node {
    name: String,
    namespace: String,
    tree: KubeletTree,
    vms: Vec<Vm>,
    volumes: Vec<Volume>,
}

impl Node {
    fn build(cp: &ControlPlane, tag: &str, size: usize) -> Self {
        let (name, namespace) = (format!("node-{tag}"), format!("vms-{tag}"));
        let n_vms = size.div_ceil(VOLUMES_PER_VMI);
        let vms = cp.rt.block_on(create_objects(cp, &namespace, &name, n_vms));
        let tree = KubeletTree::new();
        let volumes: Vec<Volume> = (0..size)
            .map(|i| Volume { vm: i % n_vms, name: format!("disk-{}", i / n_vms), loop_index: 0, present: false })
            .collect();
        let mut indices: Vec<u32> = Vec::with_capacity(size);
        for _ in 0..size {
            indices.push(loop_add());
        }
        let mut node = Node { name, namespace, tree, vms, volumes };
        for (vm, _) in node.vms.iter().enumerate() {
            node.tree.launcher(&node.vms[vm].launcher_uid);
            node.tree.attachment(&node.vms[vm].attachment_uid);
        }
        for (i, index) in indices.into_iter().enumerate() {
            node.plug(i, index);
        }
        node
    }

    fn dev(index: u32) -> DevNum {
        DevNum::new(7, index)
    }

    /// The attachment pod's PVC node and virt-handler's node in the launcher, for a device.
    fn plug(&mut self, i: usize, index: u32) {
        let v = &mut self.volumes[i];
        let vm = &self.vms[v.vm];
        self.tree.attach_block(&vm.attachment_uid, &v.name, Self::dev(index));
        self.tree.launcher_block(&vm.launcher_uid, &v.name, Self::dev(index));
        v.loop_index = index;
        v.present = true;
    }

    /// Takes the volume's nodes away and hotplugs it again on a new device.
    fn replug(&mut self, i: usize) {
        let v = &self.volumes[i];
        let vm = &self.vms[v.vm];
        fs::remove_file(self.tree.hotplug_dir(&vm.launcher_uid).join(&v.name)).unwrap();
        fs::remove_dir_all(self.tree.hotplug_dir(&vm.attachment_uid).join(&v.name)).unwrap();
        self.plug(i, loop_add());
    }

    fn remove_all_devices(&mut self) {
        let present: Vec<u32> = self
            .volumes
            .iter_mut()
            .filter(|v| v.present)
            .map(|v| {
                v.present = false;
                v.loop_index
            })
            .collect();
        parallel(present, 64, loop_remove);
    }
}

async fn create_objects(cp: &ControlPlane, ns: &str, node: &str, n_vms: usize) -> Vec<Vm> {
    let pp = PostParams::default();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin.clone());
    nss.create(&pp, &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap()).await.unwrap();
    let vmis: Api<DynamicObject> =
        Api::namespaced_with(cp.admin.clone(), ns, &hotplug_watchdog::cluster::vmi_resource());
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), ns);
    let one = |i: usize| {
        let (vmis, pods, pp) = (vmis.clone(), pods.clone(), pp.clone());
        async move {
            let vm = format!("vm-{i}");
            let volumes: Vec<Value> = (0..VOLUMES_PER_VMI)
                .map(|j| json!({"name": format!("disk-{j}"), "persistentVolumeClaim": {"claimName": format!("pvc-{vm}-{j}")}}))
                .collect();
            let vmi: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": vm, "labels": {"kubevirt.io/nodeName": node}},
                "spec": {"domain": {"devices": {}}, "volumes": volumes}
            }))
            .unwrap();
            let vmi_uid = vmis.create(&pp, &vmi).await.unwrap().metadata.uid.unwrap();
            let launcher_name = format!("virt-launcher-{vm}");
            let launcher: Pod = serde_json::from_value(json!({
                "metadata": {"name": launcher_name,
                    "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi_uid},
                    "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": vm, "uid": vmi_uid, "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "compute", "image": "virt-launcher"}]}
            }))
            .unwrap();
            let launcher_uid = pods.create(&pp, &launcher).await.unwrap().metadata.uid.unwrap();
            let attachment_name = format!("hp-volume-{vm}");
            let attachment: Pod = serde_json::from_value(json!({
                "metadata": {"name": attachment_name, "labels": {"kubevirt.io": "hotplug-disk"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": launcher_name, "uid": launcher_uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "hotplug-disk", "image": "virt-launcher"}]}
            }))
            .unwrap();
            let attachment_uid = pods.create(&pp, &attachment).await.unwrap().metadata.uid.unwrap();
            Vm { launcher_uid, attachment_uid, attachment_name }
        }
    };
    futures::stream::iter(0..n_vms).map(one).buffered(16).collect().await
}

// ------------------------------------------------------------------ the agent

/// Asks `/readyz` over one kept-alive connection, as often as start-up is polled (every
/// 2 ms): a new connection per poll costs the agent an accept and a wake-up each, CPU
/// that its start-up would share the machine's two cores with.
struct ReadyProbe {
    port: u16,
    conn: Option<BufReader<std::net::TcpStream>>,
}

impl ReadyProbe {
    /// Whether `/readyz` answers 200; `false` also while the agent does not listen yet.
    fn ready(&mut self) -> bool {
        let answer = self.ask();
        if answer.is_none() {
            self.conn = None;
        }
        answer == Some(200)
    }

    fn ask(&mut self) -> Option<u16> {
        if self.conn.is_none() {
            let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut()?;
        write!(conn.get_mut(), "GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let (mut status, mut length, mut line) = (None, 0usize, String::new());
        loop {
            line.clear();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status.is_none() {
                status = l.split_whitespace().nth(1)?.parse().ok();
            } else if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(conn, &mut body).ok()?;
        status
    }
}

/// A start-up: spawn to `/readyz` answering 200, and the CPU time spent meanwhile by the
/// agent and by etcd and the API server (on a machine of few cores they compete). The
/// agent's is that of its threads alive at ready (`schedstat`): the threads of a full read
/// or of a judgment have ended by then, and their time is not in it.
struct Startup {
    took: Duration,
    agent_cpu: Duration,
    control_plane_cpu: Duration,
}

impl Startup {
    fn put(&self, figs: &mut Figures, prefix: &str, col: &str) {
        figs.put(&format!("{prefix}to /readyz (ms)"), col, self.took.as_secs_f64() * 1e3);
        figs.put(
            &format!("{prefix}agent CPU to ready, threads alive then (ms)"),
            col,
            self.agent_cpu.as_secs_f64() * 1e3,
        );
        figs.put(
            &format!("{prefix}etcd + API server CPU meanwhile (ms)"),
            col,
            self.control_plane_cpu.as_secs_f64() * 1e3,
        );
    }
}

struct AgentProcess {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
}

impl AgentProcess {
    /// Cluster mode with default flags (logs at info, as deployed); returns it once
    /// `/readyz` answers 200, with the time that took from spawn.
    fn start(cp: &ControlPlane, node: &Node, binary: &Path) -> (Self, Startup) {
        let control_plane_before = control_plane_cpu(cp);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let started = Instant::now();
        let child = Command::new(binary)
            .env_remove("NODE_NAME")
            .env_remove("HOTPLUG_WATCHDOG_LOG_LEVEL")
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--node-name", &node.name, "--kubeconfig"])
            .arg(cp.agent_kubeconfig(&node.name))
            .arg("--kubelet-root")
            .arg(&node.tree.root)
            .args(["--mountinfo", "/proc/self/mountinfo"])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start the agent");
        let mut agent = AgentProcess { child, port, _log: log };
        let mut probe = ReadyProbe { port, conn: None };
        while !probe.ready() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited: {status}; log:\n{}", fs::read_to_string(agent._log.path()).unwrap_or_default());
            }
            assert!(started.elapsed() < Duration::from_secs(300), "agent not ready in 300 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = started.elapsed();
        // With HOTPLUG_WATCHDOG_BENCH_LOGS, each thread's CPU time at ready, to see where
        // a start-up's time went.
        if let Some(dir) = std::env::var_os("HOTPLUG_WATCHDOG_BENCH_LOGS") {
            let mut threads = String::new();
            for task in fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap().flatten() {
                let read = |f: &str| fs::read_to_string(task.path().join(f)).unwrap_or_default();
                let ns: u64 = read("schedstat").split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                threads += &format!("{:>8.1} ms  {}\n", ns as f64 / 1e6, read("comm").trim());
            }
            let _ = fs::write(Path::new(&dir).join(format!("agent-{}.threads", agent.pid())), threads);
        }
        let startup = Startup {
            took,
            agent_cpu: agent.usage().cpu,
            control_plane_cpu: control_plane_cpu(cp) - control_plane_before,
        };
        (agent, startup)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").expect("GET /metrics").1
    }

    /// CPU time and context switches of every thread, from /proc.
    fn usage(&self) -> Usage {
        process_usage(self.pid())
    }

    /// A field of /proc/<pid>/status in MiB: VmHWM (peak RSS), RssAnon (heap and stacks),
    /// RssFile (the binary's code pages, shared with the page cache).
    fn memory_mib(&self, field: &str) -> f64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status_field(&s, field) as f64 / 1024.0
    }

    fn stop(mut self) {
        // HOTPLUG_WATCHDOG_BENCH_LOGS=DIR keeps each agent's log there (`agent-<pid>.log`),
        // to see where its time went, and its memory map (`agent-<pid>.smaps`).
        if let Some(dir) = std::env::var_os("HOTPLUG_WATCHDOG_BENCH_LOGS") {
            let _ = fs::copy(self._log.path(), Path::new(&dir).join(format!("agent-{}.log", self.pid())));
            if let Ok(smaps) = fs::read(format!("/proc/{}/smaps", self.pid())) {
                let _ = fs::write(Path::new(&dir).join(format!("agent-{}.smaps", self.pid())), smaps);
            }
        }
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// CPU time and context switches of every thread of a process, from /proc.
fn process_usage(pid: u32) -> Usage {
    let mut u = Usage::default();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let p = task.path();
        if let Ok(s) = fs::read_to_string(p.join("schedstat")) {
            u.cpu += Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap());
        }
        if let Ok(s) = fs::read_to_string(p.join("status")) {
            u.switches +=
                status_field(&s, "voluntary_ctxt_switches:") + status_field(&s, "nonvoluntary_ctxt_switches:");
        }
    }
    u
}

#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    switches: u64,
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The sum of every series of a metric family.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn api_requests(agent: &AgentProcess) -> (f64, f64) {
    let m = agent.metrics();
    let all = metric_sum(&m, "hotplug_watchdog_api_requests_total");
    let writes = ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| support::metric(&m, &format!("hotplug_watchdog_api_requests_total{{verb=\"{v}\"}}")))
        .sum();
    (all, writes)
}

/// Waits until the agent's API request count stops moving for two seconds.
fn settle_api(agent: &AgentProcess) {
    let mut last = api_requests(agent).0;
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while still_since.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = api_requests(agent).0;
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
}

// ------------------------------------------------------------------ what clients see

/// The kernel's `remove` uevents of loop devices, by index, stamped on arrival: when the
/// kernel announced the removal (it does so inside `LOOP_CTL_REMOVE`, before the ioctl
/// returns), read the same way the agent reads it.
fn kernel_removals() -> Receiver<(Instant, (u32, SystemTime))> {
    use nix::sys::socket::{
        bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    let fd =
        socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkKObjectUEvent)
            .expect("uevent socket");
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(16 << 20));
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1)).expect("bind the uevent socket");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else { continue };
            let (at, wall) = (Instant::now(), SystemTime::now());
            let fields: Vec<&[u8]> = buf[..n].split(|b| *b == 0).collect();
            let field = |k: &str| fields.iter().find_map(|f| f.strip_prefix(k.as_bytes()));
            if field("ACTION=") != Some(b"remove") || field("SUBSYSTEM=") != Some(b"block") {
                continue;
            }
            let index =
                field("DEVNAME=").and_then(|d| std::str::from_utf8(d.strip_prefix(b"loop")?).ok()?.parse().ok());
            if let Some(index) = index {
                if tx.send((at, (index, wall))).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// `/watch` lines, stamped when they arrive.
fn watch_lines(port: u16) -> Receiver<(Instant, Value)> {
    let (tx, rx) = channel();
    let mut stream = WatchStream::connect(port);
    std::thread::spawn(move || {
        while let Some(line) = stream.next(Duration::from_secs(3600)) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The `DevicesPresent` condition of attachment pods, as an API watch delivers it: (pod,
/// status, message), stamped on arrival.
fn condition_updates(cp: &ControlPlane, namespace: &str) -> Receiver<(Instant, (String, String, String))> {
    let (tx, rx) = channel();
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), namespace);
    cp.rt.spawn(async move {
        let wp = WatchParams::default().labels("kubevirt.io=hotplug-disk");
        let mut version = "0".to_string();
        loop {
            let Ok(stream) = pods.watch(&wp, &version).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                let pod = match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                    WatchEvent::Bookmark(b) => {
                        version = b.metadata.resource_version;
                        continue;
                    }
                    WatchEvent::Deleted(_) => continue,
                    WatchEvent::Error(_) => {
                        version = "0".into();
                        break;
                    }
                };
                let at = Instant::now();
                version = pod.metadata.resource_version.clone().unwrap_or_default();
                let conds = pod.status.and_then(|s| s.conditions).unwrap_or_default();
                if let Some(c) = conds.into_iter().find(|c| c.type_ == "hotplug-watchdog.io/DevicesPresent") {
                    let name = pod.metadata.name.unwrap_or_default();
                    if tx.send((at, (name, c.status, c.message.unwrap_or_default()))).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Takes items until one matches; its arrival time, or `None` after `WAIT`.
fn wait_for<T>(rx: &Receiver<(Instant, T)>, matches: impl Fn(&T) -> bool) -> Option<Instant> {
    wait_for_item(rx, matches).map(|(at, _)| at)
}

/// [`wait_for`], with the item.
fn wait_for_item<T>(rx: &Receiver<(Instant, T)>, matches: impl Fn(&T) -> bool) -> Option<(Instant, T)> {
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((at, item)) if matches(&item) => return Some((at, item)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

// ------------------------------------------------------------------ figures

/// Milliseconds, signed: a line can arrive before the ioctl returns (see `since`).
fn ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        later.duration_since(earlier).as_secs_f64() * 1e3
    } else {
        -(earlier.duration_since(later).as_secs_f64() * 1e3)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99, max.
fn summary(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    [percentile(&v, 50.0), percentile(&v, 99.0), v.last().copied().unwrap_or(f64::NAN)]
}

/// One run's figures: (row, column) -> value.
#[derive(Default)]
struct Figures(BTreeMap<(String, String), f64>);

impl Figures {
    fn put(&mut self, row: &str, col: &str, value: f64) {
        self.0.insert((row.to_string(), col.to_string()), value);
    }

    fn put3(&mut self, row: &str, col: &str, s: [f64; 3]) {
        for (name, v) in ["p50", "p99", "max"].iter().zip(s) {
            self.put(&format!("{row} {name}"), col, v);
        }
    }
}

// ------------------------------------------------------------------ phases

/// An agent binary under test and the suffix of its columns ("" for the current one).
struct Binary {
    path: PathBuf,
    suffix: &'static str,
}

/// The binaries to measure, in this run's order: with `--before`, the older one first in
/// odd runs and second in even ones, so that neither always meets a warmer page cache or
/// a node the other just churned.
fn binaries(o: &Options, run: usize) -> Vec<Binary> {
    let current = Binary { path: agent_binary(), suffix: "" };
    match &o.before {
        None => vec![current],
        Some(before) => {
            let before = Binary { path: before.clone(), suffix: " before" };
            if run % 2 == 1 {
                vec![before, current]
            } else {
                vec![current, before]
            }
        }
    }
}

fn bench_size(cp: &ControlPlane, o: &Options, run: usize, size: usize, figs: &mut Figures) {
    let tag = format!("r{run}-{size}");
    eprintln!("[{tag}] building the node: {size} volumes, {} VMIs", size.div_ceil(VOLUMES_PER_VMI));
    let mut node = Node::build(cp, &tag, size);

    // 1.-4. The agent; with --before, each binary on the same node, one after the other.
    for b in binaries(o, run) {
        clear_conditions(cp, &node);
        let col = format!("{size}{}", b.suffix);
        eprintln!("[{tag}] agent {}", b.path.display());
        agent_phases(cp, o, &format!("{tag}{}", b.suffix.replace(' ', "-")), &b.path, &col, &mut node, figs);
    }
    restarts(cp, o, run, &tag, &node, figs);

    // 5. The baseline.
    baseline(&mut node, o, &tag, &size.to_string(), figs);

    // 6. The storm.
    if size == o.storm_size {
        for b in binaries(o, run) {
            clear_conditions(cp, &node);
            storm(cp, &mut node, o, &tag, &b.path, &format!("storm{}", b.suffix), figs);
        }
    }
    node.remove_all_devices();
}

/// 1b. Start-up again, `--restarts` times per binary, alternating, on a node whose sysfs
/// every binary has read by now: the first start-up on a fresh node also pays for the
/// kernel's sysfs entries of every device (in the logs, its device read takes twice as
/// long), and only one binary can be first. The median and the worst of them.
fn restarts(cp: &ControlPlane, o: &Options, run: usize, tag: &str, node: &Node, figs: &mut Figures) {
    let mut starts: BTreeMap<String, Vec<Startup>> = BTreeMap::new();
    for k in 0..o.restarts {
        for b in binaries(o, run + k) {
            clear_conditions(cp, node);
            let (agent, startup) = AgentProcess::start(cp, node, &b.path);
            settle_api(&agent);
            agent.stop();
            starts.entry(format!("{}{}", node.volumes.len(), b.suffix)).or_default().push(startup);
        }
    }
    for (col, v) in starts {
        let ms = |f: fn(&Startup) -> Duration| v.iter().map(|s| f(s).as_secs_f64() * 1e3).collect::<Vec<f64>>();
        eprintln!("[{tag}] restarts, column {col:?}: {:.1?} ms", ms(|s| s.took));
        let [p50, _, max] = summary(ms(|s| s.took));
        figs.put("start-up again, warm: to /readyz, median (ms)", &col, p50);
        figs.put("start-up again, warm: to /readyz, worst (ms)", &col, max);
        figs.put(
            "start-up again, warm: agent CPU to ready, threads alive then, median (ms)",
            &col,
            summary(ms(|s| s.agent_cpu))[0],
        );
        figs.put(
            "start-up again, warm: etcd + API server CPU meanwhile, median (ms)",
            &col,
            summary(ms(|s| s.control_plane_cpu))[0],
        );
    }
}

/// Removes every attachment pod's conditions, so that each agent binary starts from the
/// same API state: one that found its conditions already written would patch less.
fn clear_conditions(cp: &ControlPlane, node: &Node) {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), &node.namespace);
    let patch = kube::api::Patch::Merge(json!({"status": {"conditions": null}}));
    let params = kube::api::PatchParams::default();
    cp.rt.block_on(
        futures::stream::iter(&node.vms)
            .map(|vm| pods.patch_status(&vm.attachment_name, &params, &patch))
            .buffer_unordered(16)
            .for_each(|r| async move {
                r.expect("clear an attachment pod's conditions");
            }),
    );
    control_plane_quiet(cp);
}

/// Waits until etcd and the API server are done with what came before (the writes above
/// are answered before the API server's watch cache and etcd are through with them):
/// CPU under 5 ms in each of two 100 ms windows in a row, or 5 s. The agent started next
/// then meets only its own load.
fn control_plane_quiet(cp: &ControlPlane) {
    let (deadline, mut quiet) = (Instant::now() + Duration::from_secs(5), 0);
    while quiet < 2 && Instant::now() < deadline {
        let before = control_plane_cpu(cp);
        std::thread::sleep(Duration::from_millis(100));
        quiet = if control_plane_cpu(cp) - before < Duration::from_millis(5) { quiet + 1 } else { 0 };
    }
}

/// The CPU time etcd and the API server have used so far.
fn control_plane_cpu(cp: &ControlPlane) -> Duration {
    cp.pids().into_iter().map(|pid| process_usage(pid).cpu).sum()
}

/// Start-up, idle, detection and footprint of one agent binary on the node, in column `col`.
fn agent_phases(
    cp: &ControlPlane,
    o: &Options,
    tag: &str,
    binary: &Path,
    col: &str,
    node: &mut Node,
    figs: &mut Figures,
) {
    let col = col.to_string();
    // 1. Start-up.
    let (agent, startup) = AgentProcess::start(cp, node, binary);
    startup.put(figs, "start-up: ", &col);
    let startup = startup.took;
    let (requests, _) = api_requests(&agent);
    settle_api(&agent);
    let (settled, _) = api_requests(&agent);
    figs.put("API requests to start (at ready / settled)", &col, settled);
    eprintln!("[{tag}] ready in {startup:?}; {requests} API requests at ready, {settled} once settled");

    // 2. Idle.
    let (req0, writes0) = api_requests(&agent);
    let u0 = agent.usage();
    std::thread::sleep(o.idle);
    let u1 = agent.usage();
    let (req1, writes1) = api_requests(&agent);
    let per60 = 60.0 / o.idle.as_secs_f64();
    figs.put("idle: CPU ms per 60 s", &col, (u1.cpu - u0.cpu).as_secs_f64() * 1e3 * per60);
    figs.put("idle: context switches per 60 s", &col, (u1.switches - u0.switches) as f64 * per60);
    figs.put("idle: API requests per 60 s", &col, (req1 - req0) * per60);
    figs.put("idle: API writes per 60 s", &col, (writes1 - writes0) * per60);

    // 3. Detection, one removal at a time.
    let lines = watch_lines(agent.port);
    let kernel = kernel_removals();
    let conditions = condition_updates(cp, &node.namespace);
    let transitions0 = metric_sum(&agent.metrics(), "hotplug_watchdog_volume_transitions_total");
    let (mut to_watch, mut to_watch_from_call, mut to_condition, mut missed) = (vec![], vec![], vec![], 0);
    let (mut from_uevent, mut condition_from_uevent) = (vec![], vec![]);
    // The /watch latency in two: uevent to the line's `time` (when the engine published
    // it, the same wall clock), and from there to the client.
    let (mut to_published, mut published_to_client) = (vec![], vec![]);
    for k in 0..o.removals {
        // Each attachment pod takes one condition write a second; removals far enough apart
        // that a pod's next one does not wait for that limit (see BENCHMARKS.md).
        let paced =
            Instant::now() + Duration::from_millis(1200).div_f64(node.vms.len() as f64).max(Duration::from_millis(20));
        let i = k % node.volumes.len();
        let (launcher, attachment) = {
            let vm = &node.vms[node.volumes[i].vm];
            (vm.launcher_uid.clone(), vm.attachment_name.clone())
        };
        let (name, index) = (node.volumes[i].name.clone(), node.volumes[i].loop_index);
        let device = format!("{name} (7:{index})");
        let called = Instant::now();
        loop_remove(index);
        let returned = Instant::now();
        let announced = wait_for_item(&kernel, |(i, _)| *i == index);
        let seen =
            wait_for_item(&lines, |l| l["pod_uid"] == *launcher && l["volume"] == *name && l["to"] == "vanished");
        if let (Some((announced, (_, wall))), Some((seen, line))) = (&announced, &seen) {
            let uevent = wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            if let Some(published) = line["time"].as_f64() {
                let to_publish = (published - uevent) * 1e3;
                to_published.push(to_publish);
                published_to_client.push(ms(*seen, *announced) - to_publish);
            }
        }
        let (announced, seen) = (announced.map(|(at, _)| at), seen.map(|(at, _)| at));
        let written = wait_for(&conditions, |(pod, status, message)| {
            *pod == attachment && status == "False" && message.contains(&device)
        });
        match (seen, written) {
            (Some(seen), Some(written)) => {
                to_watch.push(ms(seen, returned));
                to_watch_from_call.push(ms(seen, called));
                to_condition.push(ms(written, returned));
                if let Some(announced) = announced {
                    from_uevent.push(ms(seen, announced));
                    condition_from_uevent.push(ms(written, announced));
                }
            }
            _ => {
                missed += 1;
                eprintln!("[{tag}] removal {k} ({device}): /watch {seen:?}, condition {written:?}");
            }
        }
        node.replug(i);
        let name = name.clone();
        if wait_for(&lines, |l| l["pod_uid"] == *launcher && l["volume"] == *name && l["to"] == "ready").is_none() {
            eprintln!("[{tag}] {name} of {launcher} not ready again");
        }
        std::thread::sleep(paced.saturating_duration_since(Instant::now()));
    }
    let (req2, writes2) = api_requests(&agent);
    settle_api(&agent);
    let (req3, writes3) = api_requests(&agent);
    let transitions = metric_sum(&agent.metrics(), "hotplug_watchdog_volume_transitions_total") - transitions0;
    eprintln!("[{tag}] {} removals timed, {missed} missed; {transitions} transitions", to_watch.len());
    figs.put3("agent: removal -> /watch (ms)", &col, summary(to_watch));
    figs.put3("agent: ioctl call -> /watch (ms)", &col, summary(to_watch_from_call));
    figs.put3("agent: kernel remove uevent -> /watch (ms)", &col, summary(from_uevent));
    figs.put3("agent: kernel remove uevent -> /watch line published (ms)", &col, summary(to_published));
    figs.put3("agent: /watch line published -> client (ms)", &col, summary(published_to_client));
    figs.put3("agent: removal -> pod condition in API (ms)", &col, summary(to_condition));
    figs.put3("agent: kernel remove uevent -> pod condition in API (ms)", &col, summary(condition_from_uevent));
    figs.put("agent: removals not seen within 15 s", &col, missed as f64);
    figs.put("API requests per transition", &col, (req3 - req1) / transitions);
    figs.put("API writes per transition", &col, (writes3 - writes1) / transitions);
    let _ = (req2, writes2);

    // 4. Footprint.
    figs.put("peak RSS (MiB)", &col, agent.memory_mib("VmHWM:"));
    figs.put("RSS at the end: anonymous (MiB)", &col, agent.memory_mib("RssAnon:"));
    figs.put("RSS at the end: file-backed, the binary (MiB)", &col, agent.memory_mib("RssFile:"));
    agent.stop();
}

/// A volume whose device the baseline phase removed: which, when (on the monotonic clock
/// and on the wall clock, which NPD's log uses), and when each NPD reported it (by period).
struct Removed {
    volume: usize,
    at: Instant,
    wall: SystemTime,
    seen: BTreeMap<u64, Instant>,
}

/// One problem report of a node-problem-detector: a plugin run that found a device
/// missing, when its log line reached us, and when NPD started that run.
struct NpdReport {
    period: u64,
    at: Instant,
    run_started: SystemTime,
    /// How long the plugin run took, as NPD logs it.
    run_took: Option<Duration>,
}

/// The baseline: node-problem-detector running benches/baseline/check-hotplug-devices.sh
/// as a custom plugin, the way an operator deploys it, one NPD every 1 s and one every 30 s
/// at once, while devices are removed at random moments.
fn baseline(node: &mut Node, o: &Options, tag: &str, col: &str, figs: &mut Figures) {
    let npd = o.npd.as_deref().expect("checked in main");
    let periods = [1u64, 30];
    let (tx, reports) = channel::<NpdReport>();
    let mut npds: Vec<Npd> = periods.iter().map(|&period| Npd::start(npd, period, node, tx.clone())).collect();
    drop(tx);
    let start = Instant::now();
    let end = start + o.baseline_window;

    // Removals at random moments over the first part of the window, so that every one has
    // at least a full 30 s period plus a run left to be seen.
    let span = o.baseline_window.saturating_sub(Duration::from_secs(35));
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut at: Vec<Duration> = (0..o.removals)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            span.mul_f64((rng % 1_000_000) as f64 / 1e6)
        })
        .collect();
    at.sort();
    let mut out: Vec<Removed> = Vec::new();
    let mut latencies: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut run_took: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut next = 0;
    let mut cursor = 0;
    while Instant::now() < end {
        if next < at.len() && Instant::now() >= start + at[next] {
            // The next present volume, round robin.
            let n = node.volumes.len();
            if let Some(i) = (0..n).map(|d| (cursor + d) % n).find(|&i| node.volumes[i].present) {
                cursor = i + 1;
                loop_remove(node.volumes[i].loop_index);
                node.volumes[i].present = false;
                out.push(Removed { volume: i, at: Instant::now(), wall: SystemTime::now(), seen: BTreeMap::new() });
                next += 1;
            }
        }
        let report = match reports.recv_timeout(Duration::from_millis(5)) {
            Ok(report) => report,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            // Both stderr pipes closed: both NPDs exited.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                npds.iter_mut().for_each(Npd::panic_if_exited);
                unreachable!("both NPDs' logs ended, yet neither exited")
            }
        };
        run_took.entry(report.period).or_default().extend(report.run_took.map(|d| d.as_secs_f64() * 1e3));
        // A run NPD started after the ioctl returned found the device gone: the device
        // stays removed until both NPDs reported it. A run already under way at the
        // removal may have named it too, but NPD keeps only the first max_output_length
        // bytes of the plugin's output, so only the start time tells for sure. How long a
        // run takes (printed) says how many removals that concerns: about run / period.
        for r in out.iter_mut().filter(|r| report.run_started > r.wall && !r.seen.contains_key(&report.period)) {
            r.seen.insert(report.period, report.at);
            latencies.entry(report.period).or_default().push(ms(report.at, r.at));
        }
        // Reported by both: hotplug it again on a new device.
        for r in out.iter().filter(|r| r.seen.len() == periods.len()) {
            node.replug(r.volume);
        }
        out.retain(|r| r.seen.len() < periods.len());
    }
    for npd in npds {
        let period = npd.period;
        let u = npd.stop();
        let row = format!("baseline NPD {period} s");
        let lat = latencies.remove(&period).unwrap_or_default();
        let took = run_took.remove(&period).unwrap_or_default();
        let per60 = |d: Duration, over: Duration| d.as_secs_f64() * 1e3 * 60.0 / over.as_secs_f64();
        eprintln!(
            "[{tag}] NPD every {period} s: {} removals reported, {} problem reports in {:?}",
            lat.len(),
            took.len(),
            u.life
        );
        figs.put(&format!("{row}: removals not reported"), col, (o.removals - lat.len()) as f64);
        figs.put3(&format!("{row}: removal -> NPD report (ms)"), col, summary(lat));
        figs.put3(&format!("{row}: plugin run that found a problem (ms)"), col, summary(took));
        figs.put(&format!("{row}: CPU ms per 60 s, NPD + plugin runs"), col, per60(u.all.cpu, u.life));
        figs.put(&format!("{row}: CPU ms per 60 s, plugin runs"), col, per60(u.plugin_cpu, u.sampled));
        figs.put(
            &format!("{row}: context switches per 60 s, NPD + plugin runs"),
            col,
            u.all.switches as f64 * 60.0 / u.life.as_secs_f64(),
        );
        figs.put(&format!("{row}: NPD peak RSS (MiB)"), col, u.peak_rss_mib);
    }
    // Whatever is still out comes back, for the storm and the tear-down.
    for r in out {
        node.replug(r.volume);
    }
}

/// A node-problem-detector process in standalone mode (no API server: its k8s exporter
/// off), with the custom plugin monitor of benches/baseline/hotplug-device-monitor.json.
struct Npd {
    child: Child,
    period: u64,
    spawned: Instant,
    log: PathBuf,
    _config: tempfile::NamedTempFile,
}

/// What an NPD cost over its life.
struct NpdUsage {
    /// NPD and every plugin run it reaped, from spawn to exit (wait4 of NPD).
    all: Usage,
    /// The plugin runs' CPU (cutime + cstime of NPD), from spawn to just before SIGTERM.
    plugin_cpu: Duration,
    sampled: Duration,
    life: Duration,
    /// NPD's own VmHWM (the plugin runs are short-lived processes of their own).
    peak_rss_mib: f64,
}

impl Npd {
    /// The committed config as an operator would deploy it, with the invoke interval, the
    /// script's path and the kubelet pods directory of this node filled in. NPD logs at
    /// `--v=2`, where it logs every plugin run that found a problem with the run's start
    /// time: what the benchmark times removals to (see `baseline`). Its Prometheus
    /// exporter stays on, as deployed, on a free local port; it is not scraped.
    fn start(npd: &Path, period: u64, node: &Node, tx: std::sync::mpsc::Sender<NpdReport>) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/baseline");
        let mut config: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("hotplug-device-monitor.json")).unwrap()).unwrap();
        config["pluginConfig"]["invoke_interval"] = json!(format!("{period}s"));
        for rule in config["rules"].as_array_mut().unwrap() {
            rule["path"] = json!(dir.join("check-hotplug-devices.sh"));
            rule["args"] = json!([node.tree.root]);
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("hotplug-watchdog-bench-npd-{}-{period}s.log", std::process::id()));
        let spawned = Instant::now();
        let mut child = Command::new(npd)
            .arg(format!("--config.custom-plugin-monitor={}", file.path().display()))
            .args(["--enable-k8s-exporter=false", "--port=0", "--prometheus-address=127.0.0.1", "--v=2"])
            .arg(format!("--prometheus-port={port}"))
            .arg(format!("--hostname-override={}", node.name))
            // Go prints times in the local zone; UTC makes them easy to read back.
            .env("TZ", "UTC")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node-problem-detector");
        let stderr = child.stderr.take().unwrap();
        let mut copy = fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            // Read to the end even when nobody listens any more: a full pipe would stall NPD.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let _ = writeln!(copy, "{line}");
                // plugin.go, at V(2) for a run whose exit status is not OK:
                // "Rule: &{...}. Start time: 2026-11-30 08:50:01.0123 +0000 UTC m=+1.0. End time: ..."
                if let Some(run_started) = line.split_once(". Start time: ").and_then(|(_, t)| go_utc_time(t)) {
                    let run_took = line.rsplit_once(". Duration: ").and_then(|(_, d)| go_duration(d));
                    let _ = tx.send(NpdReport { period, at, run_started, run_took });
                }
            }
        });
        Npd { child, period, spawned, log, _config: file }
    }

    /// Panics, with NPD's log, if it is no longer running (a config it refused, say).
    fn panic_if_exited(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            panic!("node-problem-detector every {} s exited: {status}; log:\n{log}", self.period);
        }
    }

    fn stop(mut self) -> NpdUsage {
        self.panic_if_exited();
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("NPD is running");
        let sampled = self.spawned.elapsed();
        // The fields after "(comm) ", from field 3 (state) on; cutime and cstime, the CPU
        // of the children NPD reaped (and of theirs), are fields 16 and 17 of proc(5).
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let field = |n: usize| fields[n - 3].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as f64;
        let ticks = |n: u64| Duration::from_secs_f64(n as f64 / tick);
        let plugin_cpu = ticks(field(16) + field(17));
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let peak_rss_mib = status_field(&status, "VmHWM:") as f64 / 1024.0;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        let mut wstatus = 0;
        // SAFETY: wait4 fills the rusage struct we pass; the pid is our child's.
        let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { nix::libc::wait4(pid as i32, &mut wstatus, 0, &mut ru) };
        assert_eq!(r, pid as i32, "wait4 NPD");
        let life = self.spawned.elapsed();
        let tv = |t: nix::libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        let all = Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), switches: (ru.ru_nvcsw + ru.ru_nivcsw) as u64 };
        let _ = fs::remove_file(&self.log);
        NpdUsage { all, plugin_cpu, sampled, life, peak_rss_mib }
    }
}

/// Go's `time.Duration.String()`: "12.26ms", "1.5s", "950µs", "1m2.5s".
fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim().trim_end_matches('.');
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "µs" | "us" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * scale;
        rest = next;
    }
    Some(Duration::from_secs_f64(total))
}

/// Go's `time.Time.String()` in UTC, "2026-11-30 08:50:01.0123 +0000 UTC ...", as a
/// SystemTime (Go drops trailing zeros of the fraction, and the dot if none is left).
fn go_utc_time(s: &str) -> Option<SystemTime> {
    let mut parts = s.split(' ');
    let (date, time, zone) = (parts.next()?, parts.next()?, parts.next()?);
    if zone != "+0000" {
        return None;
    }
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<u64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (&[y, m, day], &[h, min, sec]) = (d.as_slice(), t.as_slice()) else { return None };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos as u32))
}

fn storm(cp: &ControlPlane, node: &mut Node, o: &Options, tag: &str, binary: &Path, col: &str, figs: &mut Figures) {
    let (agent, _) = AgentProcess::start(cp, node, binary);
    settle_api(&agent);
    let m0 = agent.metrics();
    // A tenth of the events remove volumes' devices (vanished), a tenth add devices that
    // stay; the rest add and remove new devices.
    let vanish = (o.storm_events / 10).min(node.volumes.len() / 2);
    let stay = o.storm_events / 10;
    let churn = (o.storm_events - vanish - stay) / 2;
    let victims: Vec<u32> = node
        .volumes
        .iter_mut()
        .take(vanish)
        .map(|v| {
            v.present = false;
            v.loop_index
        })
        .collect();
    eprintln!("[{tag}] storm: {churn} devices added and removed, {stay} added, {vanish} volumes' devices removed");
    let started = Instant::now();
    let added = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| parallel(victims, 16, loop_remove));
        s.spawn(|| {
            for _ in 0..stay {
                added.lock().unwrap().push(loop_add());
            }
        });
        s.spawn(|| parallel((0..churn).collect(), 48, |_| loop_remove(loop_add())));
    });
    let burst = started.elapsed();
    // Quiet: no new uevent for two seconds.
    let uevents = |m: &str| support::metric(m, "hotplug_watchdog_source_events_total{source=\"uevent\"}");
    let mut last = uevents(&agent.metrics());
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
        let now = uevents(&agent.metrics());
        if now != last {
            (last, still) = (now, Instant::now());
        }
    }
    let m1 = agent.metrics();
    let agent_report: Value = serde_json::from_str(&http_get(agent.port, "/scan").unwrap().1).unwrap();
    let out = Command::new(binary)
        .args(["scan", "--format", "json", "--kmsg", "off", "--mountinfo", "/proc/self/mountinfo", "--kubelet-root"])
        .arg(&node.tree.root)
        .env_remove("HOTPLUG_WATCHDOG_KUBECONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "scan: {}", String::from_utf8_lossy(&out.stderr));
    let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mismatches = compare(&agent_report, &fresh);
    let rescans = |m: &str, r: &str| support::metric(m, &format!("hotplug_watchdog_rescans_total{{reason=\"{r}\"}}"));
    figs.put("storm: device uevents in the burst", col, (2 * churn + stay + vanish) as f64);
    figs.put("storm: burst duration (ms)", col, burst.as_secs_f64() * 1e3);
    figs.put("storm: uevents the agent received", col, uevents(&m1) - uevents(&m0));
    figs.put(
        "storm: rescans after a uevent overflow",
        col,
        rescans(&m1, "uevent_overflow") - rescans(&m0, "uevent_overflow"),
    );
    figs.put("storm: vanished volumes (expected / seen)", col, vanish as f64);
    let vanished = agent_report["volumes"].as_array().unwrap().iter().filter(|v| v["state"] == "vanished").count();
    figs.put("storm: vanished volumes seen by the agent", col, vanished as f64);
    figs.put("storm: verdicts differing from a fresh scan", col, mismatches as f64);
    eprintln!("[{tag}] storm: burst {burst:?}, {vanished} vanished, {mismatches} mismatches");
    agent.stop();
    parallel(added.into_inner().unwrap(), 16, loop_remove);
    // The lost volumes come back on new devices: the next binary's storm starts from the
    // same node.
    for i in 0..vanish {
        node.replug(i);
    }
}

fn differ<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count() + b.keys().filter(|k| !a.contains_key(*k)).count()
}

/// Differences in volume states/devices and attachment-pod handoff safety.
fn compare(agent: &Value, fresh: &Value) -> usize {
    let volumes = |r: &Value| -> BTreeMap<(String, String), (Value, Value)> {
        r["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| ((v["pod_uid"].to_string(), v["volume"].to_string()), (v["state"].clone(), v["device"].clone())))
            .collect()
    };
    let pods = |r: &Value| -> BTreeMap<String, Value> {
        r["attachment_pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["pod_uid"].to_string(), p["handoff_safe"].clone()))
            .collect()
    };
    let (va, vf) = (volumes(agent), volumes(fresh));
    for (k, v) in &va {
        if vf.get(k) != Some(v) {
            eprintln!("  mismatch {k:?}: agent {v:?}, fresh scan {:?}", vf.get(k));
        }
    }
    differ(&va, &vf) + differ(&pods(agent), &pods(fresh))
}

// ------------------------------------------------------------------ main

fn main() {
    let o = Options::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark needs root: loop devices, device nodes");
        std::process::exit(1);
    }
    if o.npd.is_none() {
        usage(
            "the baseline needs node-problem-detector: --npd PATH or HOTPLUG_WATCHDOG_NPD \
               (tools/node-problem-detector/build.sh builds it and prints its path)",
        );
    }
    print_machine();
    // Which binaries the columns are, for whoever reads the output later.
    println!("agent: {}", agent_binary().display());
    if let Some(before) = &o.before {
        println!("agent, \"before\" columns: {}", before.display());
    }
    let npd = o.npd.as_deref().unwrap();
    let version =
        Command::new(npd).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("node-problem-detector: {} ({})", npd.display(), version.unwrap_or_default());
    let cp = ControlPlane::start();
    let mut runs: Vec<Figures> = Vec::new();
    for run in 1..=o.runs {
        let mut figs = Figures::default();
        for &size in &o.sizes {
            bench_size(&cp, &o, run, size, &mut figs);
        }
        print_table(&format!("run {run} of {}", o.runs), &figs, &o);
        runs.push(figs);
    }
    if runs.len() > 1 {
        let mut median = Figures::default();
        for key in runs[0].0.keys() {
            let mut v: Vec<f64> = runs.iter().filter_map(|f| f.0.get(key).copied()).collect();
            v.sort_by(f64::total_cmp);
            median.0.insert(key.clone(), v[v.len() / 2]);
        }
        print_table(&format!("median of {} runs", runs.len()), &median, &o);
    }
}

fn print_machine() {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let mem = status_field(&fs::read_to_string("/proc/meminfo").unwrap_or_default(), "MemTotal:") / 1024 / 1024;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {} cpus ({cpu}), {mem} GiB, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    );
}

fn print_table(title: &str, figs: &Figures, o: &Options) {
    // With --before, each size's older binary next to the current one: "1000 before", "1000".
    let suffixes: &[&str] = if o.before.is_some() { &[" before", ""] } else { &[""] };
    let mut cols: Vec<String> = o.sizes.iter().flat_map(|s| suffixes.iter().map(move |x| format!("{s}{x}"))).collect();
    cols.extend(suffixes.iter().map(|x| format!("storm{x}")).filter(|c| figs.0.keys().any(|(_, k)| k == c)));
    let rows: BTreeSet<&String> = figs.0.keys().map(|(r, _)| r).collect();
    let mut out = String::new();
    out += &format!("\n{title}\n{:<62}", "volumes on the node");
    for c in &cols {
        out += &format!("{c:>14}");
    }
    out += "\n";
    for row in rows {
        out += &format!("{row:<62}");
        for c in &cols {
            match figs.0.get(&(row.clone(), c.clone())) {
                Some(v) if v.abs() >= 100.0 || v.fract() == 0.0 => out += &format!("{v:>14.0}"),
                Some(v) => out += &format!("{v:>14.2}"),
                None => out += &format!("{:>14}", "-"),
            }
        }
        out += "\n";
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
