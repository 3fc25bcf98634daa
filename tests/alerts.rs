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

/// The metrics of other components docs/metrics.md lists (its second table), with the
/// labels the rules may match on.
fn other_components_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let doc = read("docs/metrics.md");
    let section = doc
        .split_once("## Metrics of other components the alerts use")
        .expect("docs/metrics.md: a section `## Metrics of other components the alerts use`")
        .1;
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = cells[3].split('`').skip(1).step_by(2).map(str::to_string).collect();
            (cells[1].trim_matches('`').to_string(), labels)
        })
        .collect()
}

/// Every series selector in a PromQL query: the metric's name and the label names its
/// matchers use (`name{a="x", b=~"y"}` gives `("name", {a, b})`). Function names, keywords
/// and the label lists of `by`, `on`, `without`, `ignoring`, `group_left`, `group_right`
/// are not metric names.
fn selectors(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    const KEYWORDS: [&str; 11] =
        ["and", "or", "unless", "by", "on", "without", "ignoring", "group_left", "group_right", "offset", "bool"];
    // Aggregation operators may put `by (...)` between their name and `(`.
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            // A string outside a selector: skip it.
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            // A number or a duration (5m, 1e3).
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            if KEYWORDS.contains(&word.as_str()) {
                after_grouping = !matches!(word.as_str(), "and" | "or" | "unless" | "offset" | "bool");
                continue;
            }
            if after_grouping && next == Some('(') {
                // The label list of by (...), on (...), ...: skip it.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                after_grouping = false;
                continue;
            }
            after_grouping = false;
            if next == Some('(') || AGGREGATIONS.contains(&word.as_str()) {
                continue; // a function or an aggregation
            }
            let mut labels = BTreeSet::new();
            if next == Some('{') {
                // label op "value", ... : a label name starts each matcher, values are quoted.
                let mut k = j + 1;
                while k < chars.len() && chars[k] != '}' {
                    if chars[k] == '"' || chars[k] == '\'' {
                        let q = chars[k];
                        k += 1;
                        while k < chars.len() && chars[k] != q {
                            k += if chars[k] == '\\' { 2 } else { 1 };
                        }
                        k += 1;
                    } else if ident(chars[k]) {
                        let start = k;
                        while k < chars.len() && ident(chars[k]) {
                            k += 1;
                        }
                        labels.insert(chars[start..k].iter().collect::<String>());
                    } else {
                        k += 1;
                    }
                }
                assert!(k < chars.len(), "an unclosed {{ in {expr}");
                i = k + 1;
            }
            out.push((word, labels));
        } else if c == '(' && after_grouping {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            after_grouping = false;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn every_metric_the_rules_use_is_documented_with_its_labels() {
    let ours = documented_metrics();
    let others = other_components_metrics();
    assert!(others.contains_key("apiserver_validating_admission_policy_check_total"), "{others:?}");
    let mut problems = Vec::new();
    for rule in rules(&rule_resource()) {
        let name = str_at(rule, "alert").or(str_at(rule, "record")).unwrap();
        for (metric, labels) in selectors(str_at(rule, "expr").unwrap()) {
            if metric.starts_with("hotplug_watchdog_") {
                if !is_documented(&metric, &ours) {
                    problems.push(format!("{name}: {metric} is not in docs/metrics.md"));
                }
                continue;
            }
            match others.get(&metric) {
                None => problems
                    .push(format!("{name}: {metric} is not in docs/metrics.md's table of other components' metrics")),
                Some(known) => {
                    for l in labels.difference(known) {
                        problems
                            .push(format!("{name}: {metric}{{{l}=...}}: label {l} is not listed in docs/metrics.md"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn selector_scanner() {
    let found = selectors(
        r#"count by (node) (group by (node, name) (kubevirt_vmi_info{phase="running", node!=""}))
          unless on (node) up{job="x"} or sum without (instance) (increase(a_total{b=~"c,d"}[5m]) offset 5m) > 0"#,
    );
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(
        found,
        vec![
            ("kubevirt_vmi_info".to_string(), set(&["phase", "node"])),
            ("up".to_string(), set(&["job"])),
            ("a_total".to_string(), set(&["b"])),
        ]
    );
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
