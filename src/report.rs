//! The node report: what `scan` prints and `/scan` serves. The JSON field names are a
//! stable interface (documented in docs/scan-format.md); add fields, never rename.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

pub use crate::model::PodNames;

use crate::device::DevNum;
use crate::layout::{PodUid, Skipped};
use crate::verdict::{Verdicts, VolumeKey, VolumeMode, VolumeState};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub volumes: Vec<VolumeReport>,
    pub attachment_pods: Vec<AttachmentPodReport>,
    /// Entries in the watched tree that do not fit the layout and were passed over.
    pub skipped: Vec<SkippedReport>,
    /// Cluster mode: pod directories the API does not confirm as this node's launcher or
    /// attachment pods (UIDs). They decide nothing.
    pub unconfirmed: Vec<PodUid>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VolumeReport {
    /// The launcher pod's UID.
    pub pod_uid: PodUid,
    pub volume: String,
    pub mode: VolumeMode,
    pub state: VolumeState,
    pub device: Option<DevNum>,
    pub backing_pods: Vec<PodUid>,
    pub namespace: Option<String>,
    pub vmi: Option<String>,
    /// The launcher pod's name.
    pub pod: Option<String>,
    /// Whether the VMI's spec still has the volume; `false`: an unplug is in progress.
    pub in_spec: Option<bool>,
    /// Block-layer I/O errors the kernel logged for the volume's device (the agent: since
    /// it started; `scan`: in the kernel's log buffer).
    pub io_errors: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AttachmentPodReport {
    pub pod_uid: PodUid,
    pub volumes: Vec<String>,
    /// `handoff == "True"`: deleting it now orphans no launcher device.
    pub handoff_safe: bool,
    /// The HandoffSafe condition's status: "True", "False" or "Unknown".
    pub handoff: &'static str,
    /// Its reason (docs/design.md lists them).
    pub handoff_reason: &'static str,
    /// Another attachment pod of the same launcher may replace this one (see
    /// `AttachmentVerdict::superseded`).
    pub superseded: bool,
    /// The launcher pod it serves, when known.
    pub launcher_pod_uid: Option<PodUid>,
    /// `<launcher>/<volume>` whose device only this pod serves.
    pub sole_backer_of: Vec<String>,
    pub namespace: Option<String>,
    pub vmi: Option<String>,
    /// The attachment pod's name.
    pub pod: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SkippedReport {
    pub path: String,
    pub reason: String,
}

impl Report {
    pub fn new(
        verdicts: &Verdicts,
        names: &BTreeMap<PodUid, PodNames>,
        skipped: &[Skipped],
        io_errors: &imbl::OrdMap<VolumeKey, u64>,
    ) -> Self {
        let name = |uid: &PodUid| names.get(uid).cloned().unwrap_or_default();
        let volumes = verdicts
            .volumes
            .iter()
            .map(|(key, v)| {
                let n = name(&key.launcher);
                VolumeReport {
                    pod_uid: key.launcher.clone(),
                    volume: key.volume.clone(),
                    mode: v.mode,
                    state: v.state,
                    device: v.device,
                    backing_pods: v.backing_pods.iter().cloned().collect(),
                    namespace: n.namespace,
                    vmi: n.vmi,
                    pod: n.pod,
                    in_spec: v.in_spec,
                    io_errors: io_errors.get(key).copied().unwrap_or(0),
                }
            })
            .collect();
        let attachment_pods = verdicts
            .attachment_pods
            .iter()
            .map(|(uid, a)| {
                let n = name(uid);
                AttachmentPodReport {
                    pod_uid: uid.clone(),
                    volumes: a.volumes.iter().cloned().collect(),
                    handoff_safe: a.handoff_safe(),
                    handoff: a.handoff.status().as_str(),
                    handoff_reason: a.handoff.as_str(),
                    superseded: a.superseded,
                    launcher_pod_uid: a.launcher.clone(),
                    sole_backer_of: a.sole_backer_of.iter().map(|k| format!("{}/{}", k.launcher, k.volume)).collect(),
                    namespace: n.namespace,
                    vmi: n.vmi,
                    pod: n.pod,
                }
            })
            .collect();
        let skipped = skipped
            .iter()
            .map(|s| SkippedReport { path: s.path.to_string_lossy().into_owned(), reason: s.reason.to_string() })
            .collect();
        Report { volumes, attachment_pods, skipped, unconfirmed: verdicts.unconfirmed.iter().cloned().collect() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// A table for a person at a terminal. Names are escaped so that a name with a newline
    /// or control character cannot forge a row.
    pub fn to_table(&self) -> String {
        let mut rows = vec![vec![
            "LAUNCHER POD".into(),
            "VOLUME".into(),
            "MODE".into(),
            "STATE".into(),
            "DEVICE".into(),
            "BACKING PODS".into(),
        ]];
        for v in &self.volumes {
            rows.push(vec![
                who(&v.pod_uid, &v.namespace, &v.pod),
                esc(&v.volume),
                format!("{:?}", v.mode).to_lowercase(),
                v.state.as_str().into(),
                v.device.map_or("-".into(), |d| d.to_string()),
                list(&v.backing_pods),
            ]);
        }
        let mut out = table(&rows);
        let launcher_names: BTreeMap<&str, String> =
            self.volumes.iter().map(|v| (v.pod_uid.as_str(), who(&v.pod_uid, &v.namespace, &v.pod))).collect();
        let mut rows =
            vec![vec!["ATTACHMENT POD".into(), "LAUNCHER POD".into(), "VOLUMES".into(), "HANDOFF SAFE".into()]];
        for a in &self.attachment_pods {
            rows.push(vec![
                who(&a.pod_uid, &a.namespace, &a.pod),
                a.launcher_pod_uid
                    .as_deref()
                    .map_or("?".into(), |l| launcher_names.get(l).cloned().unwrap_or_else(|| esc(l))),
                list(&a.volumes),
                match a.handoff {
                    "True" => format!("yes ({})", a.handoff_reason),
                    "False" => {
                        // `<launcher uid>/<volume>`: the launcher is in its own column.
                        let volumes: Vec<String> = a
                            .sole_backer_of
                            .iter()
                            .map(|k| k.split_once('/').map_or(k.clone(), |(_, v)| v.to_string()))
                            .collect();
                        format!("NO: alone serves {}", list(&volumes))
                    }
                    _ => format!("UNKNOWN: {}", a.handoff_reason),
                },
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
        if !self.unconfirmed.is_empty() {
            let _ = writeln!(
                out,
                "\nUNCONFIRMED ({}): pod directories the API does not confirm; they decide nothing",
                self.unconfirmed.len()
            );
            for uid in &self.unconfirmed {
                let _ = writeln!(out, "  {}", esc(uid));
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nSKIPPED ({}):", self.skipped.len());
            for s in &self.skipped {
                let _ = writeln!(out, "  {}: {}", esc(&s.path), s.reason);
            }
        }
        out
    }
}

/// A pod as a person knows it: `namespace/name` in cluster mode, else its UID.
fn who(uid: &str, namespace: &Option<String>, name: &Option<String>) -> String {
    match (namespace, name) {
        (Some(ns), Some(name)) => esc(&format!("{ns}/{name}")),
        _ => esc(uid),
    }
}

fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(|s| esc(s.as_ref())).collect::<Vec<_>>().join(",")
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
