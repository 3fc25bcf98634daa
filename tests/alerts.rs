//! The alerts (deploy/prometheusrule.yaml) and the Grafana dashboard
//! (deploy/grafana/hotplug-watchdog-dashboard.json) hold together:
//! - promtool accepts the rules, and their unit tests in tests/alerts/ pass;
//! - every alert has a severity, a summary, a description, a runbook section in
//!   docs/alerts.md, and unit tests;
//! - every hotplug_watchdog_* metric they or the dashboard use is in docs/metrics.md (which
//!   tests/docs.rs holds to what the binary serves);
//! - every dashboard panel has a title and queries, and promtool parses every query.
//!
//! promtool comes with Debian's `prometheus` package (scripts/setup). Without it the promtool
//! checks are skipped, loudly, unless CI=true, where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The name the unit tests in tests/alerts/ give the rules (`rule_files:`), next to them.
const RULES_FILE: &str = "hotplug-watchdog.rules.yaml";
const RUNBOOKS: &str = "https://github.com/hotplug-watchdog/hotplug-watchdog/blob/main/docs/alerts.md#";
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

fn read(rel: &str) -> String {
    let path = Path::new(ROOT).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rule_resource() -> Yaml {
    serde_yaml::from_str(&read("deploy/prometheusrule.yaml")).expect("deploy/prometheusrule.yaml is YAML")
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/hotplug-watchdog-dashboard.json")).expect("the dashboard is JSON")
}

fn str_at<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

/// Every rule (alerting or recording) in the resource's `.spec.groups`.
fn rules(resource: &Yaml) -> Vec<&Yaml> {
    let groups = resource["spec"]["groups"].as_sequence().expect(".spec.groups is a list");
    groups.iter().flat_map(|g| g["rules"].as_sequence().expect("each group has rules").iter()).collect()
}

fn alerts(resource: &Yaml) -> Vec<&Yaml> {
    rules(resource).into_iter().filter(|r| r.get("alert").is_some()).collect()
}

/// promtool, or None (skipped, said on stderr) when it is missing outside CI.
fn promtool(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    if Command::new(&candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: promtool not found (Debian package prometheus, scripts/setup) and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: promtool not found (install Debian package prometheus, or run scripts/setup)");
    None
}

/// Runs promtool and fails with everything it said unless it succeeded.
fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool).args(args).current_dir(dir).output().expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    text
}

/// The unit test files, by name.
fn unit_test_files() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("tests/alerts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.yaml in tests/alerts");
    files
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool("promtool_accepts_the_rules_and_their_unit_tests_pass") else { return };
    let dir = tempfile::tempdir().unwrap();
    // What promtool reads: the PrometheusRule's spec, `groups:` and all.
    let spec = serde_yaml::to_string(&rule_resource()["spec"]).unwrap();
    std::fs::write(dir.path().join(RULES_FILE), spec).unwrap();
    let out = run_promtool(&promtool, dir.path(), &["check", "rules", RULES_FILE]);
    eprintln!("{out}");

    let mut names = Vec::new();
    for file in unit_test_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let test: Yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rule_files: Vec<&str> =
            test["rule_files"].as_sequence().expect("rule_files").iter().filter_map(Yaml::as_str).collect();
        assert_eq!(
            rule_files,
            [RULES_FILE],
            "{}: rule_files must be the extracted rules, by relative path",
            file.display()
        );
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(name);
    }
    let mut args = vec!["test", "rules"];
    args.extend(names.iter().map(String::as_str));
    let out = run_promtool(&promtool, dir.path(), &args);
    eprintln!("{out}");
}

/// GitHub's anchors for the headings of a Markdown file: lower case, spaces to `-`, other
/// punctuation dropped.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let anchor: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(anchor);
    }
    out
}

/// Every `alertname:` the unit tests check.
fn tested_alerts() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in unit_test_files() {
        let test: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in test["tests"].as_sequence().expect("tests") {
            for a in case.get("alert_rule_test").and_then(Yaml::as_sequence).into_iter().flatten() {
                out.insert(str_at(a, "alertname").expect("alertname").to_string());
            }
        }
    }
    out
}

#[test]
fn every_alert_has_severity_summary_description_runbook_and_tests() {
    let resource = rule_resource();
    assert_eq!(str_at(&resource, "apiVersion"), Some("monitoring.coreos.com/v1"));
    assert_eq!(str_at(&resource, "kind"), Some("PrometheusRule"));
    let meta = &resource["metadata"];
    assert_eq!(str_at(meta, "name"), Some("hotplug-watchdog"));
    assert_eq!(str_at(meta, "namespace"), Some("hotplug-watchdog"));
    assert_eq!(str_at(&meta["labels"], "app.kubernetes.io/name"), Some("hotplug-watchdog"));

    let runbooks = read("docs/alerts.md");
    let anchors = anchors(&runbooks);
    let tested = tested_alerts();
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for alert in alerts(&resource) {
        let name = str_at(alert, "alert").unwrap();
        if !names.insert(name.to_string()) {
            problems.push(format!("{name}: defined twice"));
        }
        if !name.starts_with("Hotplug") {
            problems.push(format!("{name}: alert names start with Hotplug"));
        }
        match alert.get("labels").and_then(|l| str_at(l, "severity")) {
            Some(s) if SEVERITIES.contains(&s) => {}
            other => problems.push(format!("{name}: labels.severity {other:?}, want one of {SEVERITIES:?}")),
        }
        let annotations = alert.get("annotations");
        for key in ["summary", "description", "runbook_url"] {
            if annotations.and_then(|a| str_at(a, key)).is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{name}: no annotations.{key}"));
            }
        }
        let url = annotations.and_then(|a| str_at(a, "runbook_url")).unwrap_or_default();
        match url.strip_prefix(RUNBOOKS) {
            Some(anchor) if anchor == name.to_lowercase() && anchors.contains(anchor) => {}
            _ => problems.push(format!(
                "{name}: runbook_url {url:?} must be {RUNBOOKS}{} with a heading `## {name}` in docs/alerts.md",
                name.to_lowercase()
            )),
        }
        if !tested.contains(name) {
            problems.push(format!("{name}: no alert_rule_test in tests/alerts/*.test.yaml"));
        }
    }
    // And no runbook for an alert that does not exist (any more).
    for line in runbooks.lines() {
        if let Some(heading) = line.strip_prefix("## Hotplug") {
            let name = format!("Hotplug{}", heading.trim());
            if !names.contains(&name) {
                problems.push(format!(
                    "docs/alerts.md: runbook `{name}` for an alert that deploy/prometheusrule.yaml lacks"
                ));
            }
        }
    }
    for name in &tested {
        if !names.contains(name) {
            problems.push(format!("tests/alerts: tests an alert that does not exist: {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The metrics docs/metrics.md's table lists, with their type (counters with `_total`,
/// histograms by their base name).
fn documented_metrics() -> BTreeMap<String, String> {
    let names: BTreeMap<String, String> = read("docs/metrics.md")
        .lines()
        .filter(|l| l.starts_with("| `hotplug_watchdog_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string())
        })
        .collect();
    assert!(names.len() > 10, "docs/metrics.md lists too few metrics: {names:?}");
    names
}

/// Every `hotplug_watchdog_*` name in a query.
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hotplug_watchdog_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(ident) {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Whether the table has a series name: a histogram's series count under its base name.
fn is_documented(name: &str, documented: &BTreeMap<String, String>) -> bool {
    let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
    documented.contains_key(name) || base.is_some_and(|b| documented.get(b).is_some_and(|t| t == "histogram"))
}

/// Every PromQL query of the dashboard, with where it is: `(panel title, refId, expr)`;
/// template variable queries too.
fn dashboard_queries(dash: &Json) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &[Json], out: &mut Vec<(String, String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), t["refId"].as_str().unwrap_or_default().to_string(), expr.to_string()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    walk(dash["panels"].as_array().expect("panels"), &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let query = v["query"].get("query").or(Some(&v["query"])).and_then(Json::as_str);
        if v["type"] == "query" {
            out.push((format!("variable {}", v["name"]), String::new(), query.unwrap_or_default().to_string()));
        }
    }
    out
}

#[test]
fn metrics_in_alerts_and_dashboard_are_documented() {
    let documented = documented_metrics();
    let mut used = Vec::new();
    for rule in rules(&rule_resource()) {
        let name = str_at(rule, "alert").or(str_at(rule, "record")).unwrap().to_string();
        used.extend(
            metric_names(str_at(rule, "expr").expect("every rule has an expr")).into_iter().map(|m| (name.clone(), m)),
        );
    }
    for (title, _, expr) in dashboard_queries(&dashboard()) {
        used.extend(metric_names(&expr).into_iter().map(|m| (format!("dashboard panel {title:?}"), m)));
    }
    assert!(used.len() > 20, "too few metric uses found: {used:?}");
    let missing: Vec<String> = used
        .iter()
        .filter(|(_, m)| !is_documented(m, &documented))
        .map(|(w, m)| format!("{w}: {m} is not in docs/metrics.md"))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn metric_name_scanner() {
    assert_eq!(
        metric_names(
            r#"rate(hotplug_watchdog_x_bucket{job="hotplug-watchdog"}[5m]) / xhotplug_watchdog_y + hotplug_watchdog_z"#
        ),
        ["hotplug_watchdog_x_bucket", "hotplug_watchdog_z"]
    );
    let documented = BTreeMap::from([
        ("hotplug_watchdog_h_seconds".to_string(), "histogram".to_string()),
        ("hotplug_watchdog_c_total".to_string(), "counter".to_string()),
    ]);
    assert!(!is_documented("hotplug_watchdog_h", &documented));
    assert!(is_documented("hotplug_watchdog_h_seconds_bucket", &documented));
    assert!(is_documented("hotplug_watchdog_c_total", &documented));
    assert!(!is_documented("hotplug_watchdog_c", &documented));
    assert!(!is_documented("hotplug_watchdog_c_total_bucket", &documented));
}

#[test]
fn dashboard_panels_have_titles_and_queries() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion {}", dash["schemaVersion"]);
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["node", "namespace"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        let q = v["query"]["query"].as_str().unwrap_or_default();
        assert!(q.starts_with("label_values(") && q.contains(&format!(", {name})")), "{name}: {q}");
    }

    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut count = 0;
    fn all(panels: &[Json]) -> Vec<&Json> {
        panels
            .iter()
            .flat_map(|p| std::iter::once(p).chain(all(p["panels"].as_array().map_or(&[], Vec::as_slice))))
            .collect()
    }
    for p in all(dash["panels"].as_array().expect("panels")) {
        let title = p["title"].as_str().unwrap_or_default();
        if title.trim().is_empty() {
            problems.push(format!("panel {} has no title", p["id"]));
        }
        if !ids.insert(p["id"].as_u64().expect("panel id")) {
            problems.push(format!("panel {title:?}: id {} used twice", p["id"]));
        }
        if p["type"] == "row" {
            continue;
        }
        count += 1;
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("panel {title:?}: datasource is not ${{datasource}}"));
        }
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no targets"));
        }
        for t in targets {
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("panel {title:?}: target {} has no expr", t["refId"]));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("panel {title:?}: target {} datasource is not ${{datasource}}", t["refId"]));
            }
        }
    }
    assert!(count >= 10, "only {count} panels");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Grafana's variables as concrete values promtool can parse: intervals as `5m`, the
/// others (used in `=~` matchers) as `.*`.
fn expand_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let (name, len) = match tail.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("unclosed ${");
                (&braced[..end], end + 2)
            }
            None => {
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
                (&tail[..end], end)
            }
        };
        assert!(!name.is_empty(), "a lone $ in {expr}");
        let name = name.split(':').next().unwrap();
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[test]
fn variable_expansion() {
    assert_eq!(
        expand_variables(r#"rate(m{node=~"$node",ns=~"${namespace}"}[$__rate_interval])"#),
        r#"rate(m{node=~".*",ns=~".*"}[5m])"#
    );
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(promtool) = promtool("promtool_parses_every_dashboard_query") else { return };
    // Each query as a recording rule: `promtool check rules` parses and checks them all.
    let mut queries = dashboard_queries(&dashboard());
    queries.retain(|(title, _, _)| !title.starts_with("variable "));
    let rules: Vec<Yaml> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, _, expr))| {
            let mut rule = serde_yaml::Mapping::new();
            rule.insert("record".into(), format!("dashboard:query_{i}:check").into());
            rule.insert("expr".into(), expand_variables(expr).into());
            Yaml::Mapping(rule)
        })
        .collect();
    assert!(rules.len() >= 10, "only {} queries", rules.len());
    let file = serde_yaml::to_string(&serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yaml"), &file).unwrap();
    let out = Command::new(&promtool).args(["check", "rules", "dashboard.rules.yaml"]).current_dir(dir.path()).output();
    let out = out.expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // Name the failing queries by panel: promtool numbers the rules.
        let listing: Vec<String> =
            queries.iter().enumerate().map(|(i, (t, r, e))| format!("  query_{i}: {t:?} {r}: {e}")).collect();
        panic!("promtool check rules on the dashboard's queries failed:\n{text}\nqueries:\n{}", listing.join("\n"));
    }
}
