use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use hotplug_watchdog::cli::{Cli, Command, Format, RunArgs, ScanArgs};
use hotplug_watchdog::cluster;
use hotplug_watchdog::cluster::outcome::WriteKind;
use hotplug_watchdog::engine::Engine;
use hotplug_watchdog::feed::Feed;
use hotplug_watchdog::http;
use hotplug_watchdog::inventory::{Inventory, Observation};
use hotplug_watchdog::metrics::Metrics;
use hotplug_watchdog::report::Report;
use hotplug_watchdog::sources::health::{spawn_supervised, Health};
use hotplug_watchdog::sources::inotify::TreeWatcher;
use hotplug_watchdog::sources::kmsg::KernelLog;
use hotplug_watchdog::sources::mounts::MountTable;
use hotplug_watchdog::sources::runner::Sources;
use hotplug_watchdog::sources::uevents::Uevents;
use hotplug_watchdog::sources::{self, channel, read_node, SeqClock};
use hotplug_watchdog::verdict::judge;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Scan(args) => scan(args),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotplug-watchdog: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let paths = args.node.paths();
    let read = read_node(&paths, 1)?;
    let mut inventory = Inventory::default();
    inventory.apply(Observation::FullScan(read.scan));
    if let Err(e) = sources::mounts::check_view(&paths) {
        eprintln!("hotplug-watchdog: {e}");
        inventory.set_mount_view_mismatch(true);
    }
    let mut names = Default::default();
    if let Some(kubeconfig) = &args.kubeconfig {
        let node = match &args.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()?.into_string().map_err(|_| anyhow::anyhow!("host name is not UTF-8"))?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let view = runtime.block_on(async {
            let client = cluster::client::connect(Some(kubeconfig), Default::default()).await?;
            cluster::list_view(client, &node).await.with_context(|| format!("cannot list node {node}'s pods and VMIs"))
        })?;
        inventory.apply(Observation::Cluster(view.facts));
        names = view.names;
    }
    let verdicts = judge(&inventory);
    let mut io_errors = imbl::OrdMap::new();
    if let Some(kmsg) = args.node.kmsg() {
        match sources::kmsg::errors_in_buffer(kmsg, &args.node.sysfs) {
            Ok(per_device) => {
                for (key, v) in &verdicts.volumes {
                    if let Some(n) = v.device.and_then(|d| per_device.get(&d)) {
                        io_errors.insert(key.clone(), *n);
                    }
                }
            }
            Err(e) => eprintln!("hotplug-watchdog: not counting I/O errors: cannot read {}: {e}", kmsg.display()),
        }
    }
    let report = Report::new(&verdicts, &names, &read.skipped, &io_errors);
    match args.format {
        Format::Json => println!("{}", report.to_json()),
        Format::Table => print!("{}", report.to_table()),
    }
    Ok(())
}

fn init_logging(args: &RunArgs) -> anyhow::Result<()> {
    hotplug_watchdog::logging::init(&args.log_level, args.log_format)
        .with_context(|| format!("bad --log-level {:?}", args.log_level))
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Cluster mode needs to know which node it is on; say so before anything starts.
    let node_name = match (&args.node_name, args.standalone) {
        (_, true) => None,
        (Some(n), false) if !n.is_empty() => Some(n.clone()),
        _ => {
            anyhow::bail!("cluster mode needs --node-name (or NODE_NAME); pass --standalone to run without Kubernetes")
        }
    };
    // The lease's name and timing are checked before anything starts, too.
    let lease = match &node_name {
        Some(node) => Some(lease_config(&args, node)?),
        None => None,
    };
    init_logging(&args)?;
    one_malloc_arena();
    let paths = args.node.paths();
    let (tx, rx) = channel::channel(channel::CAPACITY);
    let clock = Arc::new(SeqClock::default());
    let health = Arc::new(Health::default());
    // The engine's snapshots: what every reader (metrics, /scan, the cluster side) sees.
    let (snapshot_tx, snapshots) = tokio::sync::watch::channel(Arc::default());
    let metrics = Arc::new(Metrics::new(snapshots.clone(), health.clone()));

    // Listen before reading: uevents and the mount table first, then the tree watch, which
    // asks for the first full scan once its watches are in place. Nothing that happens
    // after a source is listening can be missed by the scan that follows.
    let mut running = Sources::new().context("cannot start the sources")?;
    let uevents = {
        let (source, buffer, sysfs, clock) =
            (args.uevent_source, args.uevent_buffer_bytes, paths.sysfs.clone(), clock.clone());
        move || Uevents::open(source, buffer, sysfs, clock)
    };
    running.spawn(&health, tx.clone(), uevents).context("cannot listen for block uevents")?;
    let mount_table = {
        let (paths, clock) = (paths.clone(), clock.clone());
        move || MountTable::open(&paths, clock)
    };
    running
        .spawn(&health, tx.clone(), mount_table)
        .with_context(|| format!("cannot open mount table {}", paths.mountinfo.display()))?;
    let tree = {
        let (paths, clock) = (paths.clone(), clock.clone());
        move || TreeWatcher::open(&paths, clock)
    };
    running.spawn(&health, tx.clone(), tree).context("cannot start inotify")?;
    if let Some(kmsg) = args.node.kmsg() {
        // Optional: without the kernel log the agent still sees devices come and go.
        let kernel_log = {
            let (path, sysfs) = (kmsg.to_path_buf(), paths.sysfs.clone());
            move || KernelLog::open(&path, sysfs)
        };
        if let Err(e) = running.spawn(&health, tx.clone(), kernel_log) {
            tracing::warn!(path = %kmsg.display(), error = %e, "not counting kernel I/O errors: cannot read the kernel log");
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let feed = Feed::default();
        let mut engine =
            Engine::new(paths.clone(), clock, metrics.clone(), snapshot_tx, health.clone(), args.rescan_interval)
                .with_feed(feed.clone())
                .with_gone_series_for(args.gone_series_for);
        if let Some((node, lease)) = node_name.clone().zip(lease) {
            // Building the client reads configuration only; the API server may be down.
            let config = cluster::client::config(args.kubeconfig.as_deref()).await?;
            let client = cluster::client::build(config.clone(), metrics.api_requests_total.clone())?;
            // The lease has connections of its own (see lease::run).
            let lease_client = cluster::client::build(config, metrics.api_requests_total.clone())?;
            let (events_tx, events_rx) = cluster::events::EventSender::channel(metrics.events_total.clone());
            let events_tx_for_status = events_tx.clone();
            engine = engine.with_notice_sink(Box::new(move |vmi, n| {
                events_tx.send(cluster::events::VmiEvent {
                    vmi: vmi.clone(),
                    warning: n.kind.is_warning(),
                    reason: n.kind.reason(),
                    note: n.message,
                })
            }));
            let condition_failures = cluster::write_health::WriteHealth::new(
                WriteKind::PodConditions,
                health.clone(),
                metrics.writes_failing(WriteKind::PodConditions),
            );
            let conditions = cluster::status::ConditionWriter::new(
                client.clone(),
                metrics.status_writes_total.clone(),
                condition_failures,
            );
            let volume_status = cluster::status::VmiStatusWriter::new(
                client.clone(),
                args.vmi_volume_status,
                metrics.status_writes_total.clone(),
                Some(events_tx_for_status),
            );
            // Every cluster task is supervised: one that ends or panics fails /healthz.
            let (observed_tx, observed_rx) = tokio::sync::watch::channel(Default::default());
            let keep_volume_status = volume_status.is_on();
            let watch = cluster::watch(client.clone(), node.clone(), tx, health.clone(), observed_tx, keep_volume_status);
            spawn_supervised(&health, "cluster watch", watch);
            // The lease's first write before the conditions (see lease::first_outcome); a
            // first write may take two requests (a PATCH that finds no lease, then a POST).
            let (lease_answered_tx, lease_answered) = tokio::sync::watch::channel(false);
            let lease_first = cluster::lease::first_outcome(lease_answered, 2 * lease.write_timeout());
            let writers = cluster::status::run(conditions, volume_status, snapshots.clone(), observed_rx, lease_first);
            spawn_supervised(&health, "status writers", writers);
            let events = cluster::events::run(client.clone(), node, events_rx, metrics.events_total.clone());
            spawn_supervised(&health, "events", events);
            let lease = cluster::lease::run(
                lease_client,
                lease,
                health.clone(),
                args.stall_timeout,
                metrics.status_writes_total.clone(),
                metrics.writes_failing(WriteKind::Lease),
                lease_answered_tx,
            );
            spawn_supervised(&health, "lease", lease);
        } else {
            drop(tx);
        }
        let engine_hb = health.register("engine");
        std::thread::Builder::new().name("engine".into()).spawn(move || {
            hotplug_watchdog::sched::prefer_prompt_wakeups("engine");
            engine.run(rx, engine_hb)
        })?;

        let listener = http::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
        let mode = if node_name.is_some() { "cluster" } else { "standalone" };
        tracing::info!(mode, node = ?node_name, listen = %args.listen, kubelet_root = %paths.kubelet_root.display(), mountinfo = %paths.mountinfo.display(), "hotplug-watchdog running");
        // `/watch` streams end at shutdown, so that graceful shutdown does not wait on them.
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let limits = http::Limits::default();
        let watch_streams = Arc::new(tokio::sync::Semaphore::new(limits.max_watch_streams));
        let state =
            http::AppState { metrics, snapshots, health, stall_after: args.stall_timeout, feed, stopping, watch_streams };
        let mut served = http::spawn(listener, state, limits).context("cannot start the HTTP server")?;
        tokio::select! {
            () = shutdown_signal() => {
                let _ = stopping_tx.send(true);
                // Requests under way finish first (at most a few seconds, see http::serve).
                if let Ok(result) = served.await {
                    result?;
                }
            }
            // The server ended by itself: only an error does that.
            ended = &mut served => ended.unwrap_or_else(|_| Err(std::io::Error::other("the HTTP thread panicked")))
                .context("the HTTP server stopped")?,
        }
        anyhow::Ok(())
    })?;
    running.stop(std::time::Duration::from_secs(1));
    tracing::info!("shut down");
    Ok(())
}

/// One malloc arena for every thread, set before any thread starts. glibc gives each
/// thread that allocates an arena of its own (up to eight per core), and what a thread
/// frees stays in its arena: each of the agent's threads kept its own high-water mark. At
/// 1,000 volumes that was 7.0 MiB of anonymous memory against 5.2 with one arena
/// (BENCHMARKS.md). The threads seldom allocate at the same moment, and glibc's
/// per-thread cache serves small allocations without taking the arena's lock.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets one of malloc's parameters; no thread allocates yet.
        let set = unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1) };
        if set != 1 {
            tracing::debug!("malloc refused M_ARENA_MAX=1; keeping its default arenas");
        }
    }
}

/// This node's lease, from the flags; a bad name or timing stops the agent at start.
fn lease_config(args: &RunArgs, node: &str) -> anyhow::Result<cluster::lease::LeaseConfig> {
    let pod = match args.pod_name.as_deref() {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => nix::unistd::gethostname()?.into_string().map_err(|_| anyhow::anyhow!("host name is not UTF-8"))?,
    };
    Ok(cluster::lease::LeaseConfig::new(
        node,
        &args.lease_namespace,
        &pod,
        args.lease_duration,
        args.lease_renew_interval,
    )?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
