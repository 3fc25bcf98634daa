//! Test support: real loop devices, a temp kubelet tree, and the real agent binary.
//! Shared by the integration tests and the node demo; each test uses what it needs.
#![allow(dead_code)]

pub mod control_plane;
pub mod controller;
pub mod gate_decide;
pub mod kubevirt;
pub mod race;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hotplug_watchdog::device::DevNum;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Privileged tests run as root. On a laptop without root they skip, loudly; under
/// `CI=true` a skip is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (loop devices, mknod, mounts) and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (loop devices, mknod, mounts)");
    false
}

// ---------------------------------------------------------------- loop devices

pub const LOOP_CTL_ADD: nix::libc::c_ulong = 0x4C80;
pub const LOOP_CTL_REMOVE: nix::libc::c_ulong = 0x4C81;
const LOOP_SET_FD: nix::libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: nix::libc::c_ulong = 0x4C01;

static NEXT_LOOP: AtomicU32 = AtomicU32::new(0);

/// Loop indices far from 0-7 and from other test processes: derived from the pid.
fn next_loop_index() -> u32 {
    let base = 2000 + (std::process::id() % 3000) * 256;
    base + NEXT_LOOP.fetch_add(1, Ordering::SeqCst) % 256
}

/// `LOOP_CTL_ADD` or `LOOP_CTL_REMOVE` of loop device `index` through `/dev/loop-control`.
pub fn loop_control(request: nix::libc::c_ulong, index: u32) -> nix::Result<i32> {
    let ctl = fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").expect("open /dev/loop-control");
    // SAFETY: plain integer ioctl on a file we own.
    let r = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), request, index as nix::libc::c_ulong) };
    nix::errno::Errno::result(r)
}

/// A loop device made through `/dev/loop-control` (kernel `add` uevent) and removed on
/// drop (`remove` uevent). Major 7, minor = index.
#[derive(Debug)]
pub struct LoopDevice {
    pub index: u32,
    removed: bool,
    backing_attached: bool,
}

impl LoopDevice {
    pub fn add() -> Self {
        loop {
            let index = next_loop_index();
            match loop_control(LOOP_CTL_ADD, index) {
                Ok(_) => return LoopDevice { index, removed: false, backing_attached: false },
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => panic!("LOOP_CTL_ADD {index}: {e}"),
            }
        }
    }

    /// Adds the device with this index again: same `7:N`, a new disk.
    pub fn re_add(index: u32) -> Self {
        loop_control(LOOP_CTL_ADD, index).unwrap_or_else(|e| panic!("LOOP_CTL_ADD {index}: {e}"));
        LoopDevice { index, removed: false, backing_attached: false }
    }

    pub fn dev(&self) -> DevNum {
        DevNum::new(7, self.index)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.index))
    }

    /// Backs the device with a file (`LOOP_SET_FD`), e.g. to put a filesystem on it.
    pub fn attach_file(&mut self, file: &Path) {
        let backing = fs::OpenOptions::new().read(true).write(true).open(file).expect("open backing file");
        let dev = fs::OpenOptions::new().read(true).write(true).open(self.path()).expect("open loop device");
        // SAFETY: LOOP_SET_FD takes a file descriptor as its argument.
        let r = unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd() as nix::libc::c_ulong) };
        nix::errno::Errno::result(r).expect("LOOP_SET_FD");
        self.backing_attached = true;
    }

    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        if self.backing_attached {
            if let Ok(dev) = fs::File::open(self.path()) {
                // SAFETY: LOOP_CLR_FD takes no argument.
                unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
            }
        }
        // udev or blkid may hold the device open for a moment after an event.
        for _ in 0..100 {
            match loop_control(LOOP_CTL_REMOVE, self.index) {
                Ok(_) | Err(nix::errno::Errno::ENODEV) => {
                    self.removed = true;
                    return;
                }
                Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("LOOP_CTL_REMOVE {}: {e}", self.index),
            }
        }
        panic!("LOOP_CTL_REMOVE {}: still busy", self.index);
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.removed && !std::thread::panicking() {
            self.remove();
        } else if !self.removed {
            let _ = loop_control(LOOP_CTL_REMOVE, self.index);
        }
    }
}

// ---------------------------------------------------------------- kubelet tree

/// A temp kubelet pods directory laid out as the kubelet and virt-handler do.
pub struct KubeletTree {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

pub const HOTPLUG: &str = "volumes/kubernetes.io~empty-dir/hotplug-disks";

impl KubeletTree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pods");
        fs::create_dir(&root).unwrap();
        KubeletTree { _dir: dir, root }
    }

    /// A tree whose root does not exist yet.
    pub fn without_root() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pods");
        KubeletTree { _dir: dir, root }
    }

    pub fn hotplug_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid).join(HOTPLUG)
    }

    /// A virt-launcher pod with its (empty) hotplug-disks emptyDir.
    pub fn launcher(&self, uid: &str) -> PathBuf {
        let dir = self.hotplug_dir(uid);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An attachment pod: hotplug-disks with its `hp.sock`.
    pub fn attachment(&self, uid: &str) -> PathBuf {
        let dir = self.hotplug_dir(uid);
        fs::create_dir_all(&dir).unwrap();
        // A socket path must fit in sun_path (108 bytes); temp paths with pod UIDs do not:
        // bind at a short path, then move the socket into place.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let short = std::env::temp_dir().join(format!(
            "hp-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        drop(std::os::unix::net::UnixListener::bind(&short).expect("bind hp.sock"));
        fs::rename(&short, dir.join("hp.sock")).expect("move hp.sock into place");
        dir
    }

    /// `<volume>/<pvcUID>` in an attachment pod: the PVC's block device.
    pub fn attach_block(&self, uid: &str, volume: &str, dev: DevNum) {
        let dir = self.hotplug_dir(uid).join(volume);
        fs::create_dir_all(&dir).unwrap();
        make_block_node(&dir.join(format!("pvc-{volume}")), dev);
    }

    /// What virt-handler does for a block volume: mknod `<volume>` in the launcher.
    pub fn launcher_block(&self, uid: &str, volume: impl AsRef<OsStr>, dev: DevNum) {
        make_block_node(&self.hotplug_dir(uid).join(volume.as_ref()), dev);
    }

    /// A volume hotplugged and in use: the launcher and the attachment pod, the PVC's
    /// device in the attachment pod, and the node virt-handler made in the launcher.
    pub fn hotplugged(&self, launcher: &str, attachment: &str, volume: &str, dev: DevNum) {
        self.launcher(launcher);
        self.attachment(attachment);
        self.attach_block(attachment, volume, dev);
        self.launcher_block(launcher, volume, dev);
    }

    pub fn remove_pod(&self, uid: &str) {
        fs::remove_dir_all(self.root.join(uid)).unwrap();
    }
}

pub fn make_block_node(path: &Path, dev: DevNum) {
    mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(dev.major.into(), dev.minor.into()))
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

// ---------------------------------------------------------------- mounts

/// A mount undone on drop (lazily, so a test failure cannot leave a busy mount behind).
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn filesystem(device: &Path, target: &Path, fstype: &str) -> Self {
        fs::create_dir_all(target).unwrap();
        nix::mount::mount(Some(device), target, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap_or_else(|e| panic!("mount {} on {}: {e}", device.display(), target.display()));
        Mounted(target.to_path_buf())
    }

    /// A small tmpfs: a loop device over a sparse file bigger than it fails writes with
    /// ENOSPC, which the block layer logs as a real error on that device.
    pub fn tmpfs(target: &Path, size: &str) -> Self {
        fs::create_dir_all(target).unwrap();
        let data = format!("size={size}");
        nix::mount::mount(Some("tmpfs"), target, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(data.as_str()))
            .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", target.display()));
        Mounted(target.to_path_buf())
    }

    pub fn bind(source: &Path, target: &Path) -> Self {
        nix::mount::mount(Some(source), target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
        Mounted(target.to_path_buf())
    }

    pub fn unmount(self) {
        drop(self)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A loop device whose writes fail past 1 MiB.
pub struct FailingDisk {
    pub disk: LoopDevice,
    _mount: Mounted,
    _dir: tempfile::TempDir,
}

impl FailingDisk {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = Mounted::tmpfs(&dir.path().join("small"), "1M");
        let backing = dir.path().join("small/backing");
        std::fs::File::create(&backing).unwrap().set_len(16 << 20).unwrap();
        let mut disk = LoopDevice::add();
        disk.attach_file(&backing);
        FailingDisk { disk, _mount: mount, _dir: dir }
    }

    /// Writes 4 MiB with O_DIRECT: the page cache cannot hide the error.
    /// The kernel rate-limits these log lines (a burst of 10 per 5 s), so one failed write
    /// may log nothing: fail writes about once a second until `seen` (a bounded wait).
    pub fn fail_writes_until(&self, what: &str, seen: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.fail_writes();
            let next = Instant::now() + Duration::from_secs(1);
            while Instant::now() < next {
                if seen() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() < deadline, "timed out after 30 s waiting for {what}");
        }
    }

    pub fn fail_writes(&self) {
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=4", "oflag=direct"])
            .arg(format!("of={}", self.disk.path().display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "the write must fail: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        self.disk.remove();
    }
}

/// A machine-wide sysctl set for the length of a test, then put back.
pub struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    pub fn set(path: &'static str, value: &str) -> Self {
        let old = std::fs::read_to_string(path).unwrap();
        // Some of these files take a value only with its newline.
        std::fs::write(path, format!("{value}\n")).unwrap();
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, format!("{}\n", self.old.trim()));
    }
}

pub fn mkfs_ext4(device: &Path) {
    let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(device).output().expect("run mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------- the agent

/// The agent binary: Cargo names it for integration tests; an example (the demo) finds
/// it next to its own directory, `target/<profile>/examples/..`.
pub fn agent_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_hotplug-watchdog") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent().and_then(Path::parent).expect("target/<profile>").join("hotplug-watchdog")
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real binary, `run --standalone`, killed on drop; its log kept for failure messages.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Agent {
    pub fn start(kubelet_root: &Path, extra: &[&str]) -> Self {
        Self::start_with_mountinfo(kubelet_root, Path::new("/proc/self/mountinfo"), extra)
    }

    pub fn start_with_mountinfo(kubelet_root: &Path, mountinfo: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--standalone".into()];
        args.extend(extra.iter().map(Into::into));
        Self::launch(kubelet_root, mountinfo, &args)
    }

    /// Cluster mode on `node`, talking to the API server through `kubeconfig`.
    pub fn start_cluster(kubelet_root: &Path, kubeconfig: &Path, node: &str, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--node-name".into(), node.into(), "--kubeconfig".into()];
        args.push(kubeconfig.into());
        args.extend(extra.iter().map(Into::into));
        Self::launch(kubelet_root, Path::new("/proc/self/mountinfo"), &args)
    }

    /// Cluster mode without the capabilities that bypass file permissions
    /// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`): like the DaemonSet's agent (uid 65530,
    /// no capability), a directory its mode closes is unreadable to it.
    pub fn start_cluster_without_dac(kubelet_root: &Path, kubeconfig: &Path, node: &str, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--node-name".into(), node.into(), "--kubeconfig".into()];
        args.push(kubeconfig.into());
        args.extend(extra.iter().map(Into::into));
        Self::launch_with(kubelet_root, Path::new("/proc/self/mountinfo"), &args, true, "127.0.0.1")
    }

    /// Standalone, listening on every address of the machine (the default of a real
    /// install), not only loopback.
    pub fn start_on_all_addresses(kubelet_root: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--standalone".into()];
        args.extend(extra.iter().map(Into::into));
        Self::launch_with(kubelet_root, Path::new("/proc/self/mountinfo"), &args, false, "0.0.0.0")
    }

    fn launch(kubelet_root: &Path, mountinfo: &Path, args: &[std::ffi::OsString]) -> Self {
        Self::launch_with(kubelet_root, mountinfo, args, false, "127.0.0.1")
    }

    fn launch_with(
        kubelet_root: &Path,
        mountinfo: &Path,
        args: &[std::ffi::OsString],
        drop_dac: bool,
        listen_host: &str,
    ) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(agent_binary());
        if drop_dac {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl only, between fork and exec. Root's capabilities after exec are
            // its bounding set: dropping from it drops them for the agent.
            unsafe {
                command.pre_exec(|| {
                    const CAP_DAC_OVERRIDE: nix::libc::c_ulong = 1;
                    const CAP_DAC_READ_SEARCH: nix::libc::c_ulong = 2;
                    for cap in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                        if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .env("HOTPLUG_WATCHDOG_LOG_LEVEL", "debug")
            .env_remove("NODE_NAME")
            .args(["run", "--listen"])
            .arg(format!("{listen_host}:{port}"))
            .arg("--kubelet-root")
            .arg(kubelet_root)
            .arg("--mountinfo")
            .arg(mountinfo)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start agent");
        let mut agent = Agent { child: Some(child), port, log };
        agent.wait_http();
        agent
    }

    fn wait_http(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_get("/healthz").is_some() {
                return;
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!("agent exited ({status}) before serving HTTP; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not serve HTTP within 20s; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap_or_else(|| panic!("GET {path} failed; log:\n{}", self.log()))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    pub fn report(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/scan").1).expect("/scan is JSON")
    }

    pub fn wait_ready(&self) {
        self.wait_until("ready", Duration::from_secs(20), |a| a.get("/readyz").0 == 200);
    }

    /// Polls until `cond` holds; a bounded wait, not a timing assertion.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out after {timeout:?} waiting for {what}\nreport: {}\nlog:\n{}", self.get("/scan").1, self.log());
    }

    /// Waits until the volume `launcher/volume` reaches `state` (`None`: is not reported).
    pub fn wait_volume(&self, launcher: &str, volume: &str, state: Option<&str>) {
        let what = format!("{launcher}/{volume} -> {state:?}");
        self.wait_until(&what, Duration::from_secs(10), |a| {
            volume_state(&a.report(), launcher, volume).as_deref() == state
        });
    }

    pub fn wait_handoff(&self, pod: &str, safe: bool) {
        self.wait_until(&format!("{pod} handoff_safe={safe}"), Duration::from_secs(10), |a| {
            handoff_safe(&a.report(), pod) == Some(safe)
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Subscribes to `/watch`: volume transitions as the agent publishes them.
    pub fn watch(&self) -> WatchStream {
        WatchStream::connect(self.port)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        child.wait().unwrap()
    }
}

/// `GET path` on the agent at `port`: status and body, `None` when it does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, http_body(head, body)))
}

/// A response's body as the client reads it: `/metrics` is streamed, so an HTTP/1.1 reply
/// comes in chunked transfer encoding (`<hex size>\r\n<data>\r\n`..., ending with size 0).
pub fn http_body(head: &str, body: &str) -> String {
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return body.to_string();
    }
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

/// A `/watch` reader. HTTP/1.0, so the body is plain lines until the agent closes it.
pub struct WatchStream(std::io::BufReader<TcpStream>);

impl WatchStream {
    pub fn connect(port: u16) -> Self {
        use std::io::BufRead;
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the agent");
        write!(s, "GET /watch HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.") && line.contains(" 200 "), "GET /watch: {line}");
        // The headers end with an empty line.
        while {
            line.clear();
            r.read_line(&mut line).unwrap() > 0 && line.trim_end() != ""
        } {}
        WatchStream(r)
    }

    /// The next transition line, parsed; `None` at the end of the stream or after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        use std::io::BufRead;
        self.0.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        match self.0.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("/watch line {line:?}: {e}"))),
        }
    }

    /// Reads until a line about `launcher/volume` entering `state`; `None` after `timeout`.
    pub fn wait_for(
        &mut self,
        launcher: &str,
        volume: &str,
        state: &str,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = self.next(left)?;
            if line["pod_uid"] == launcher && line["volume"] == volume && line["to"] == state {
                return Some(line);
            }
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn volume_entry<'a>(report: &'a serde_json::Value, launcher: &str, volume: &str) -> Option<&'a serde_json::Value> {
    report["volumes"].as_array()?.iter().find(|v| v["pod_uid"] == launcher && v["volume"] == volume)
}

pub fn volume_state(report: &serde_json::Value, launcher: &str, volume: &str) -> Option<String> {
    volume_entry(report, launcher, volume).and_then(|v| v["state"].as_str().map(String::from))
}

pub fn handoff_safe(report: &serde_json::Value, pod: &str) -> Option<bool> {
    report["attachment_pods"].as_array()?.iter().find(|p| p["pod_uid"] == pod).and_then(|p| p["handoff_safe"].as_bool())
}

/// The value of one sample line of the metrics text, e.g.
/// `hotplug_watchdog_rescans_total{reason="periodic"}`. Panics when the series is absent:
/// a misspelled series must fail a test, never read as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    metric_opt(text, series).unwrap_or_else(|| panic!("no series {series} in the metrics:\n{text}"))
}

/// The value of one sample line, `None` when that label set has no series yet (a counter
/// per volume exists only once it counted). The metric itself must be one the agent
/// documents (docs/metrics.md, which `tests/docs.rs` holds to the binary): a misspelled
/// name panics instead of reading as absent.
pub fn metric_opt(text: &str, series: &str) -> Option<f64> {
    let name = series.split('{').next().unwrap_or(series);
    let family = ["_bucket", "_count", "_sum"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
    let documented = include_str!("../../docs/metrics.md");
    assert!(documented.contains(&format!("`{family}`")), "{series}: no such metric in docs/metrics.md");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// `scan --format json` of the same tree, as an operator would run it.
pub fn scan_json(kubelet_root: &Path, mountinfo: &Path) -> serde_json::Value {
    let out = Command::new(agent_binary())
        .args(["scan", "--format", "json", "--kubelet-root"])
        .arg(kubelet_root)
        .arg("--mountinfo")
        .arg(mountinfo)
        .output()
        .unwrap();
    assert!(out.status.success(), "scan failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("scan prints JSON")
}

pub fn os(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}
