//! Command line: every flag also reads an environment variable, for the DaemonSet and the
//! systemd unit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::layout::DEFAULT_ROOT;
use crate::sources::uevents::UeventSource;
use crate::sources::NodePaths;

#[derive(Debug, Parser)]
#[command(
    name = "hotplug-watchdog",
    version,
    about = "Watches KubeVirt hotplug volumes on a node: devices that vanish or lose their backing attachment pod"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the node once and print every hotplug volume and attachment pod.
    Scan(ScanArgs),
    /// Run the agent: watch the node, serve /metrics, /healthz, /readyz and /scan.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The kubelet's pods directory.
    #[arg(long, env = "HOTPLUG_WATCHDOG_KUBELET_ROOT", default_value = DEFAULT_ROOT)]
    pub kubelet_root: PathBuf,
    /// The same directory as the mount table names it (when the agent sees the host's
    /// kubelet root under another path, e.g. in a container). Defaults to --kubelet-root.
    #[arg(long, env = "HOTPLUG_WATCHDOG_MOUNTINFO_KUBELET_ROOT")]
    pub mountinfo_kubelet_root: Option<PathBuf>,
    /// Where sysfs is mounted; devices are looked up in <sysfs>/dev/block.
    #[arg(long, env = "HOTPLUG_WATCHDOG_SYSFS", default_value = "/sys")]
    pub sysfs: PathBuf,
    /// The mount table of the host's mount namespace (needs hostPID in a pod).
    #[arg(long, env = "HOTPLUG_WATCHDOG_MOUNTINFO", default_value = "/proc/1/mountinfo")]
    pub mountinfo: PathBuf,
    /// The kernel log, read for block-layer I/O errors on hotplug devices (read-only;
    /// needs CAP_SYSLOG or root); `off` to not read it.
    #[arg(long, env = "HOTPLUG_WATCHDOG_KMSG", default_value = "/dev/kmsg")]
    pub kmsg: PathBuf,
}

impl NodeArgs {
    /// The kernel log to read, unless switched off.
    pub fn kmsg(&self) -> Option<&std::path::Path> {
        (self.kmsg.as_os_str() != "off").then_some(self.kmsg.as_path())
    }
}

impl NodeArgs {
    pub fn paths(&self) -> NodePaths {
        NodePaths {
            kubelet_root: self.kubelet_root.clone(),
            // The mount table names paths with symlinks resolved, as the kernel sees them.
            mountinfo_kubelet_root: self.mountinfo_kubelet_root.clone().unwrap_or_else(|| {
                std::fs::canonicalize(&self.kubelet_root).unwrap_or_else(|_| self.kubelet_root.clone())
            }),
            sysfs: self.sysfs.clone(),
            mountinfo: self.mountinfo.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Also ask the API server for namespaces, VMI and pod names (two list requests).
    #[arg(long, env = "HOTPLUG_WATCHDOG_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name for those lists; defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run without Kubernetes: node truth only, no API server.
    #[arg(long, env = "HOTPLUG_WATCHDOG_STANDALONE")]
    pub standalone: bool,
    /// This node's name, as the API server knows it (from the downward API in a pod).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// A kubeconfig file; without it, the pod's in-cluster service account is used.
    #[arg(long, env = "HOTPLUG_WATCHDOG_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Record findings in the VMI's status.volumeStatus reason/message too (needs
    /// deploy/optional/vmi-volume-status-rbac.yaml; stock KubeVirt puts such writes back).
    #[arg(long, env = "HOTPLUG_WATCHDOG_VMI_VOLUME_STATUS", value_enum, default_value = "off")]
    pub vmi_volume_status: crate::cluster::status::VmiStatusMode,
    /// Namespace of this node's Lease, hotplug-watchdog-<node> (the agent's own: the
    /// DaemonSet passes its pod's namespace).
    #[arg(long, env = "HOTPLUG_WATCHDOG_LEASE_NAMESPACE", default_value = crate::cluster::lease::DEFAULT_NAMESPACE)]
    pub lease_namespace: String,
    /// How long the Lease says the agent is alive after each renewal: whole seconds, at
    /// most 60s.
    #[arg(long, env = "HOTPLUG_WATCHDOG_LEASE_DURATION", default_value = "40s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the Lease is renewed: at most 20s and less than half of --lease-duration.
    #[arg(long, env = "HOTPLUG_WATCHDOG_LEASE_RENEW_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,
    /// This agent's pod name, for the Lease's holderIdentity <node>/<pod> (from the
    /// downward API in a pod); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Address for /metrics, /healthz, /readyz and /scan.
    #[arg(long, env = "HOTPLUG_WATCHDOG_LISTEN", default_value = "0.0.0.0:9746")]
    pub listen: SocketAddr,
    /// Full rescan period, repairing anything an event source missed (e.g. 300s, 5m).
    #[arg(long, env = "HOTPLUG_WATCHDOG_RESCAN_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub rescan_interval: Duration,
    /// How long the counters of a volume that is gone (device vanished, replaced, I/O
    /// errors) stay exported: long enough for alerts over a few minutes to see their last
    /// change; then their series are removed.
    #[arg(long, env = "HOTPLUG_WATCHDOG_GONE_SERIES_FOR", default_value = "10m", value_parser = parse_duration)]
    pub gone_series_for: Duration,
    /// Where block uevents come from.
    #[arg(long, env = "HOTPLUG_WATCHDOG_UEVENT_SOURCE", value_enum, default_value = "kernel")]
    pub uevent_source: UeventSource,
    /// Receive buffer of the uevent socket in bytes (default: the kernel's).
    #[arg(long, env = "HOTPLUG_WATCHDOG_UEVENT_BUFFER_BYTES")]
    pub uevent_buffer_bytes: Option<usize>,
    /// /healthz fails when a loop has been busy with one batch for longer than this.
    #[arg(long, env = "HOTPLUG_WATCHDOG_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    #[arg(long, env = "HOTPLUG_WATCHDOG_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// A tracing filter: info, debug, hotplug_watchdog=debug, ...
    #[arg(long, env = "HOTPLUG_WATCHDOG_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `500ms`, `30s`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 30s, 5m or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        for bad in ["", "0s", "5x", "-1s", "s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
