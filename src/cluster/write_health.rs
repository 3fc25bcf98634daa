//! Whether the agent's writes of one kind (the lease, attachment-pod conditions) are
//! failing. A consumer trusts those writes: while they are refused (RBAC, admission, an
//! expired token) or fail (timeouts, the API server away), what the cluster shows is stale,
//! so `/readyz` answers 503 naming the kind, and `hotplug_watchdog_status_writes_failing`
//! is 1, until the objects concerned have been written again (or no longer need a write).
//!
//! Failing is tracked per object: one pod whose writes are refused keeps the kind failing
//! even while other pods' writes succeed, since that pod's conditions are stale.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

use crate::sources::health::Health;

use super::outcome::{WriteKind, WriteResult};

/// The failing objects of one kind, published to readiness and the gauge on every change.
pub struct WriteHealth {
    kind: WriteKind,
    health: Arc<Health>,
    gauge: Gauge,
    /// Object -> why its last write failed.
    failing: BTreeMap<String, String>,
    /// A reason to be unready before anything was written (the lease at start).
    not_yet: Option<String>,
}

impl WriteHealth {
    pub fn new(kind: WriteKind, health: Arc<Health>, gauge: Gauge) -> Self {
        let h = WriteHealth { kind, health, gauge, failing: BTreeMap::new(), not_yet: None };
        h.publish();
        h
    }

    /// Records one write's result: `why` is the failure as `/readyz` shows it.
    pub fn record(&mut self, object: &str, result: WriteResult, why: impl FnOnce() -> String) {
        match result.written() {
            Some(true) => self.succeeded(object),
            Some(false) => self.failed(object, why()),
            None => self.forget(object),
        }
    }

    /// Unready until the first write succeeds (not counted as failing).
    pub fn not_written_yet(&mut self, why: &str) {
        self.not_yet = Some(why.to_string());
        self.publish();
    }

    pub fn succeeded(&mut self, object: &str) {
        let changed = self.failing.remove(object).is_some() || self.not_yet.is_some();
        self.not_yet = None;
        if changed {
            self.publish();
        }
    }

    /// Nothing to write any more for `object` (gone, or already right).
    pub fn forget(&mut self, object: &str) {
        if self.failing.remove(object).is_some() {
            self.publish();
        }
    }

    pub fn failed(&mut self, object: &str, why: String) {
        if self.failing.insert(object.to_string(), why.clone()) != Some(why) {
            self.publish();
        }
    }

    /// Forgets every object for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.failing.len();
        self.failing.retain(|o, _| keep(o));
        if self.failing.len() != before {
            self.publish();
        }
    }

    pub fn is_failing(&self) -> bool {
        !self.failing.is_empty()
    }

    fn publish(&self) {
        self.gauge.set(i64::from(self.is_failing()));
        self.health.set_unready(self.kind.readiness(), describe(&self.failing, self.not_yet.as_deref()));
    }
}

/// The `/readyz` reason: the first failing object and why (the API's own words), and how
/// many more there are.
fn describe(failing: &BTreeMap<String, String>, not_yet: Option<&str>) -> Option<String> {
    match failing.iter().next() {
        None => not_yet.map(str::to_string),
        Some((_, why)) if failing.len() == 1 => Some(format!("failing: {why}")),
        Some((_, why)) => Some(format!("failing for {} objects, e.g. {why}", failing.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Arc<Health>, Gauge, WriteHealth) {
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let gauge = Gauge::default();
        let w = WriteHealth::new(WriteKind::PodConditions, health.clone(), gauge.clone());
        (health, gauge, w)
    }

    #[test]
    fn a_failing_object_keeps_the_kind_failing_until_it_is_written() {
        let (health, gauge, mut w) = setup();
        assert_eq!(health.readiness(), Ok(()));
        w.failed("vms/a", "vms/a (forbidden): no".into());
        w.failed("vms/b", "vms/b (timeout): slow".into());
        assert_eq!(gauge.get(), 1);
        let why = health.readiness().unwrap_err();
        assert_eq!(why, "pod_conditions writes: failing for 2 objects, e.g. vms/a (forbidden): no");
        // Another object written does not make a's conditions current.
        w.succeeded("vms/c");
        w.succeeded("vms/a");
        assert_eq!(health.readiness().unwrap_err(), "pod_conditions writes: failing: vms/b (timeout): slow");
        // b is deleted: nothing stale is left.
        w.retain(|o| o != "vms/b");
        assert_eq!(health.readiness(), Ok(()));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn not_written_yet_is_unready_but_not_failing() {
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let gauge = Gauge::default();
        let mut w = WriteHealth::new(WriteKind::Lease, health.clone(), gauge.clone());
        w.not_written_yet("not written yet");
        assert_eq!(health.readiness().unwrap_err(), "lease writes: not written yet");
        assert_eq!(gauge.get(), 0);
        w.failed("lease", "forbidden: no".into());
        assert_eq!(health.readiness().unwrap_err(), "lease writes: failing: forbidden: no");
        w.succeeded("lease");
        assert_eq!(health.readiness(), Ok(()));
    }
}
