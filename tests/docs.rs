//! The docs name the metrics the binary serves, no more, no fewer.

mod support;

use std::collections::BTreeSet;

use support::*;

#[test]
fn metrics_reference_matches_the_binary() {
    if !require_root("metrics_reference_matches_the_binary") {
        return;
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `hotplug_watchdog_"))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .collect();

    // A volume that vanished, so that the per-volume counters have a series too.
    let tree = KubeletTree::new();
    let mut disk = LoopDevice::add();
    tree.launcher("l");
    tree.launcher_block("l", "v", disk.dev());
    // And one with real I/O errors, for the error counter.
    let failing = FailingDisk::new();
    tree.launcher_block("l", "w", failing.disk.dev());
    let agent = Agent::start(&tree.root, &[]);
    agent.wait_ready();
    failing.fail_writes_until("I/O errors counted", || {
        agent.metrics().contains("hotplug_watchdog_volume_io_errors_total{")
    });
    disk.remove();
    agent.wait_volume("l", "v", Some("vanished"));
    // And a new disk under the same number, for the replaced counter.
    let _reused = LoopDevice::re_add(disk.index);
    agent.wait_volume("l", "v", Some("replaced"));
    // Prometheus text names counters with their _total suffix, as the docs do.
    let served: BTreeSet<String> = agent
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(documented, served);
}

/// docs/configuration.md names every flag of `scan` and `run` with its environment
/// variable, and no flag the binary does not have.
#[test]
fn configuration_reference_matches_the_flags() {
    use clap::CommandFactory;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    // (flag, row): the flag is the row's first word, `--name` of `| `--name VALUE` | ...`.
    let rows: Vec<(&str, &str)> =
        doc.lines().filter(|l| l.starts_with("| `--")).map(|l| (l[3..].split([' ', '`']).next().unwrap(), l)).collect();
    let documented: BTreeSet<String> = rows.iter().map(|(flag, _)| flag.to_string()).collect();
    let mut served = BTreeSet::new();
    let cli = hotplug_watchdog::cli::Cli::command();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let flag = format!("--{long}");
            let row = rows.iter().find(|(f, _)| *f == flag).map(|(_, row)| row);
            let row = row.unwrap_or_else(|| panic!("{flag} ({}) is not in docs/configuration.md", sub.get_name()));
            if let Some(env) = arg.get_env() {
                let env = env.to_str().unwrap();
                assert!(row.contains(&format!("`{env}`")), "{flag}: its variable {env} is not in its row: {row}");
            }
            served.insert(flag);
        }
    }
    assert_eq!(documented, served, "flags in docs/configuration.md vs the binary's");
}
