//! The agent's liveness, for whoever acts on its pod conditions: a per-node
//! `coordination.k8s.io/v1` Lease, renewed while the agent is healthy and ready. A consumer
//! can then tell "the agent is alive and says unsafe" from "the agent is dead" (whose last
//! conditions are no longer kept true).
//!
//! The contract (the consumer side, e.g. the KubeVirt gate, implements exactly this):
//! - namespace: the agent's own (`--lease-namespace`, default `hotplug-watchdog`; the
//!   DaemonSet passes its pod's namespace);
//! - name: `hotplug-watchdog-<nodeName>` (the agent refuses to start when that is not a
//!   valid object name);
//! - `spec.holderIdentity`: `<nodeName>/<pod name>`;
//! - `spec.leaseDurationSeconds`: `--lease-duration` (default 40, at most 60);
//! - `spec.renewTime` (MicroTime): set to now every `--lease-renew-interval` (default 10 s);
//! - `spec.acquireTime`: when this agent process first wrote the lease (its create, or its
//!   first renewal after a restart);
//! - the agent is alive iff `renewTime + leaseDurationSeconds > now` ([`is_alive`]); no
//!   lease, or one without those fields, is not alive.
//!
//! The agent writes no other lease (the admission policy holds it to this one). It renews
//! only while `/healthz` would pass and, apart from the lease itself, `/readyz` would too: a
//! node loop that died, API watches out of sync or condition writes that fail all mean the
//! conditions may be stale, and the lease then runs out instead of vouching for them.
//!
//! Deciding is pure ([`LeaseConfig::new`], [`Renewer`], [`renewal`], [`new_lease`],
//! [`is_alive`], [`may_renew`]); [`run`] does the I/O.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::outcome::{error_text, WriteKind, WriteResult};
use super::write_health::WriteHealth;
use crate::backoff::Backoff;
use crate::metrics::WriteLabels;
use crate::sources::health::{Health, MOUNT_TABLE_READINESS};

pub const NAME_PREFIX: &str = "hotplug-watchdog-";
pub const DEFAULT_NAMESPACE: &str = "hotplug-watchdog";
pub const MAX_DURATION: Duration = Duration::from_secs(60);
pub const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(20);
/// A write that takes longer is abandoned (and retried); never longer than the interval.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry after a failed write (jittered); doubling up to the renew interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const FIELD_MANAGER: &str = "hotplug-watchdog";

/// What the agent's lease is and how it is kept, checked at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub holder: String,
    /// Whole seconds, at most 60.
    pub duration: Duration,
    /// At most 20 s and less than half of `duration`.
    pub renew_interval: Duration,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("this node's lease name {name:?} (hotplug-watchdog-<node name>) is not a valid object name: {why}")]
    BadName { name: String, why: &'static str },
    #[error(
        "--lease-namespace {0:?} is not a namespace name (a DNS label: at most 63 lower-case letters, digits and '-')"
    )]
    BadNamespace(String),
    #[error("--lease-duration {0:?} is not whole seconds (leaseDurationSeconds is an integer)")]
    FractionalDuration(Duration),
    #[error(
        "--lease-duration {0:?} is longer than {MAX_DURATION:?}: a consumer would wait that long to see a dead agent"
    )]
    DurationTooLong(Duration),
    #[error("--lease-renew-interval {0:?} is longer than {MAX_RENEW_INTERVAL:?}")]
    RenewTooSlow(Duration),
    #[error(
        "--lease-renew-interval {renew:?} must be less than half of --lease-duration {duration:?}, so that one failed renewal does not let the lease run out"
    )]
    RenewNotUnderHalf { renew: Duration, duration: Duration },
}

impl LeaseConfig {
    /// `pod` is this agent's pod name (the host name when it has none).
    pub fn new(
        node: &str,
        namespace: &str,
        pod: &str,
        duration: Duration,
        renew_interval: Duration,
    ) -> Result<Self, LeaseConfigError> {
        let name = format!("{NAME_PREFIX}{node}");
        if let Err(why) = dns_subdomain(&name) {
            return Err(LeaseConfigError::BadName { name, why });
        }
        if dns_label(namespace).is_err() {
            return Err(LeaseConfigError::BadNamespace(namespace.to_string()));
        }
        if duration.subsec_nanos() != 0 {
            return Err(LeaseConfigError::FractionalDuration(duration));
        }
        if duration > MAX_DURATION {
            return Err(LeaseConfigError::DurationTooLong(duration));
        }
        if renew_interval > MAX_RENEW_INTERVAL {
            return Err(LeaseConfigError::RenewTooSlow(renew_interval));
        }
        if renew_interval * 2 >= duration {
            return Err(LeaseConfigError::RenewNotUnderHalf { renew: renew_interval, duration });
        }
        Ok(LeaseConfig {
            namespace: namespace.to_string(),
            name,
            holder: format!("{node}/{pod}"),
            duration,
            renew_interval,
        })
    }

    fn duration_seconds(&self) -> i32 {
        // At most 60 by construction.
        self.duration.as_secs() as i32
    }

    pub fn write_timeout(&self) -> Duration {
        self.renew_interval.min(WRITE_TIMEOUT)
    }
}

/// A DNS subdomain as Kubernetes names objects (RFC 1123): at most 253 characters,
/// dot-separated labels of lower-case letters, digits and '-', each starting and ending
/// with a letter or digit.
fn dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > 253 {
        return Err("longer than 253 characters (the node name may have at most 236)");
    }
    s.split('.').try_for_each(|label| label_chars(label, 253))
}

fn dns_label(s: &str) -> Result<(), &'static str> {
    label_chars(s, 63)
}

fn label_chars(label: &str, max: usize) -> Result<(), &'static str> {
    let b = label.as_bytes();
    if b.is_empty() || b.len() > max {
        return Err("an empty or too long part");
    }
    if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') {
        return Err("only lower-case letters, digits, '-' and '.' are allowed");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("each part must start and end with a letter or digit");
    }
    Ok(())
}

/// Alive iff `renewTime + leaseDurationSeconds > now`: the consumer's rule.
pub fn is_alive(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return false };
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) if secs > 0 => {
            renewed.checked_add(SignedDuration::from_secs(i64::from(secs))).is_ok_and(|until| until > now)
        }
        _ => false,
    }
}

/// The lease as created: every field of the contract.
pub fn new_lease(config: &LeaseConfig, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some([("app.kubernetes.io/name".to_string(), "hotplug-watchdog".to_string())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.holder.clone()),
            lease_duration_seconds: Some(config.duration_seconds()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The JSON merge patch of a renewal. `claim`: this process's first write of an existing
/// lease (after a restart), which also sets `acquireTime`. Holder and duration are written
/// every time: one request either way, and a lease someone edited is put right.
///
/// Why a merge patch and not an update with resourceVersion: a renewal is then one request
/// with no read before it and no state kept between renewals, and nothing can make it
/// conflict. Optimistic locking buys nothing here: this is not leader election, no other
/// candidate's claim must be respected (the admission policy lets only this node's agent
/// write this lease), and an update would turn any edit by someone else (a label) into a
/// 409, a get and a retry.
pub fn renewal(config: &LeaseConfig, now: Timestamp, claim: bool) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "holderIdentity": config.holder,
        "leaseDurationSeconds": config.duration_seconds(),
        "renewTime": MicroTime(now),
    });
    if claim {
        spec["acquireTime"] = serde_json::json!(MicroTime(now));
    }
    serde_json::json!({ "spec": spec })
}

/// Whether the agent may say it is alive: `/healthz` passes (`healthy`) and `/readyz`
/// would, apart from the lease itself (`ready`). `Err` says why not.
pub fn may_renew(healthy: Result<(), String>, ready: Result<(), String>) -> Result<(), String> {
    healthy.map_err(|why| format!("unhealthy: {why}"))?;
    ready.map_err(|why| format!("not ready: {why}"))
}

/// The next write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A merge patch of the existing lease ([`renewal`]).
    Renew {
        claim: bool,
    },
    Create,
}

/// What the API server answered, as far as the renewer cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Written,
    /// 404: there is no lease (first start on this node, or someone deleted it).
    NotFound,
    /// 409 on a create: someone created it meanwhile.
    Exists,
    /// Anything else: refused (403, 401), timed out, unreachable, ...
    Failed,
}

impl From<WriteResult> for Answer {
    fn from(result: WriteResult) -> Self {
        match result {
            WriteResult::Ok => Answer::Written,
            WriteResult::NotFound => Answer::NotFound,
            WriteResult::Conflict => Answer::Exists,
            _ => Answer::Failed,
        }
    }
}

/// Decides the writes: patch first (the lease usually exists: one request per renewal),
/// create on a 404, patch again on a 409 from the create; a failed write is retried after
/// 1 s, doubling, never later than one renew interval (two tries fit in a lease duration),
/// each wait jittered ([`Backoff`]).
#[derive(Debug)]
pub struct Renewer {
    interval: Duration,
    next: Write,
    retry: Backoff,
    /// Writes in a row that followed a 404 or 409 at once: bounded, so that a lease
    /// deleted and created by someone else in a loop cannot make a busy loop.
    quick: u8,
}

impl Renewer {
    pub fn new(interval: Duration) -> Self {
        Renewer { interval, next: Write::Renew { claim: true }, retry: Backoff::new(FIRST_RETRY, interval), quick: 0 }
    }

    pub fn next(&self) -> Write {
        self.next
    }

    /// Whether this answer to [`Renewer::next`] is a failed write (the agent is not ready
    /// meanwhile): a 404 that leads to a create, or a 409 that leads to a patch, is not.
    pub fn is_failure(&self, answer: Answer) -> bool {
        match (self.next, answer) {
            (_, Answer::Written) => false,
            (Write::Renew { .. }, Answer::NotFound) | (Write::Create, Answer::Exists) => self.quick >= 2,
            _ => true,
        }
    }

    /// Takes the answer to [`Renewer::next`]; returns how long to wait before the next write.
    pub fn answered(&mut self, answer: Answer) -> Duration {
        match (self.next, answer) {
            (_, Answer::Written) => {
                self.next = Write::Renew { claim: false };
                self.retry.reset();
                self.quick = 0;
                self.interval
            }
            (Write::Renew { .. }, Answer::NotFound) if self.quick < 2 => {
                self.next = Write::Create;
                self.quick += 1;
                Duration::ZERO
            }
            (Write::Create, Answer::Exists) if self.quick < 2 => {
                self.next = Write::Renew { claim: true };
                self.quick += 1;
                Duration::ZERO
            }
            _ => {
                self.quick = 0;
                self.retry.next_delay()
            }
        }
    }
}

/// Keeps the lease for the agent's life. On shutdown (SIGTERM) the lease is left as it is,
/// not deleted and not released early: a consumer sees it run out `leaseDurationSeconds`
/// after the last renewal, exactly as after a crash, a SIGKILL or a lost node, so there is
/// one path to "dead" for consumers to get right, and it needs no `delete` permission. In
/// a rolling update the next agent on the node renews the same lease within seconds, with
/// no window in which it is missing.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    health: Arc<Health>,
    stall_after: Duration,
    writes: Family<WriteLabels, Counter>,
    failing: Gauge,
    answered: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut failures = WriteHealth::new(WriteKind::Lease, health.clone(), failing);
    failures.not_written_yet("not written yet");
    let mut renewer = Renewer::new(config.renew_interval);
    // Held back at start (until the node is read and the watches are in sync: /readyz
    // says so); a hold after the lease was written is worth a line in the log.
    let (mut held_back, mut ever_written) = (true, false);
    let patch_params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let post_params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    tracing::info!(namespace = %config.namespace, lease = %config.name, holder = %config.holder, duration = ?config.duration, renew_interval = ?config.renew_interval, "keeping this node's lease");
    // Connect now, while the node is being read: the first renewal, which /readyz waits
    // for, then finds its connection made, rather than making one (a TLS handshake) just
    // as the condition writers open sixteen. In one start-up at 5,000 volumes that first
    // renewal took 70 ms, handshake included. The lease's client is its own, so no other
    // request takes the connection. GET /version needs no permission; its answer does not
    // matter.
    let _ = tokio::time::timeout(config.write_timeout(), api.clone().into_client().apiserver_version()).await;
    let mut changes = health.subscribe();
    loop {
        changes.borrow_and_update();
        if let Err(why) = may_renew(
            health.check(stall_after),
            health.readiness_apart_from(&[WriteKind::Lease.readiness(), MOUNT_TABLE_READINESS]),
        ) {
            if !held_back {
                tracing::warn!(reason = %why, "not renewing the lease while the agent is not healthy and ready; consumers will see it run out");
                held_back = true;
            }
            // Readiness changes wake it at once (at start: the first write follows the last
            // watch's sync within a moment); a stall is looked at again every second.
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(FIRST_RETRY.min(config.renew_interval)) => {}
            }
            continue;
        }
        if std::mem::take(&mut held_back) && ever_written {
            tracing::info!("renewing the lease again");
        }
        let write = renewer.next();
        let now = Timestamp::now();
        let (result, what) = match write {
            Write::Renew { claim } => {
                let body = Patch::Merge(renewal(&config, now, claim));
                let patch = api.patch(&config.name, &patch_params, &body);
                (tokio::time::timeout(config.write_timeout(), patch).await.map(|r| r.map(drop)), "renew")
            }
            Write::Create => {
                let lease = new_lease(&config, now);
                let create = api.create(&post_params, &lease);
                (tokio::time::timeout(config.write_timeout(), create).await.map(|r| r.map(drop)), "create")
            }
        };
        let label = WriteResult::of(&result);
        writes.get_or_create(&WriteLabels::new(WriteKind::Lease, label)).inc();
        let answer = Answer::from(label);
        if answer == Answer::Written {
            if failures.is_failing() {
                tracing::info!(lease = %config.name, "lease written again");
            }
            failures.succeeded(&config.name);
            ever_written = true;
            answered.send_replace(true);
        } else if renewer.is_failure(answer) {
            answered.send_replace(true);
            let error = error_text(&result, config.write_timeout());
            if !failures.is_failing() {
                tracing::warn!(lease = %config.name, write = what, result = label.label(), %error, "cannot write this node's lease; retrying; not ready meanwhile");
            }
            failures.failed(
                &config.name,
                format!("{what} {}/{} ({}): {error}", config.namespace, config.name, label.label()),
            );
        } else {
            tracing::debug!(lease = %config.name, write = what, result = label.label(), "lease not there yet or just created; writing again at once");
        }
        let delay = renewer.answered(answer);
        tokio::time::sleep(delay).await;
    }
}

/// Waits until the lease's first write was answered, at most `at_most`: written or failing
/// ([`run`] sets `answered`; a 404 that a create follows is no answer yet). The status
/// writers start after it: a consumer trusts the conditions only under a fresh lease, so
/// writing them first gains nothing, and `/readyz` waits for that first write, which
/// otherwise shares the API server and this runtime with the first burst of condition
/// writes (one per attachment pod).
pub async fn first_outcome(mut answered: watch::Receiver<bool>, at_most: Duration) {
    // Err: the lease task ended; its supervisor says so. Nothing to wait for then.
    let _ = tokio::time::timeout(at_most, answered.wait_for(|a| *a)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn config() -> LeaseConfig {
        LeaseConfig::new("node-1", "hotplug-watchdog", "hotplug-watchdog-x7k2p", S(40), S(10)).unwrap()
    }

    #[test]
    fn the_contract_fields() {
        let c = config();
        assert_eq!(c.name, "hotplug-watchdog-node-1");
        assert_eq!(c.namespace, "hotplug-watchdog");
        assert_eq!(c.holder, "node-1/hotplug-watchdog-x7k2p");
        let now: Timestamp = "2026-11-30T10:00:00.123456789Z".parse().unwrap();
        let lease = serde_json::to_value(new_lease(&c, now)).unwrap();
        assert_eq!(lease["metadata"]["name"], "hotplug-watchdog-node-1");
        assert_eq!(lease["metadata"]["namespace"], "hotplug-watchdog");
        let spec = &lease["spec"];
        assert_eq!(spec["holderIdentity"], "node-1/hotplug-watchdog-x7k2p");
        assert_eq!(spec["leaseDurationSeconds"], 40);
        // MicroTime: microseconds, UTC.
        assert_eq!(spec["renewTime"], "2026-11-30T10:00:00.123456Z");
        assert_eq!(spec["acquireTime"], "2026-11-30T10:00:00.123456Z");
        let renew = renewal(&c, now, false);
        assert_eq!(
            renew,
            serde_json::json!({"spec": {"holderIdentity": "node-1/hotplug-watchdog-x7k2p", "leaseDurationSeconds": 40, "renewTime": "2026-11-30T10:00:00.123456Z"}})
        );
        assert_eq!(renewal(&c, now, true)["spec"]["acquireTime"], "2026-11-30T10:00:00.123456Z");
    }

    #[test]
    fn alive_until_renew_time_plus_duration() {
        let c = config();
        let t0: Timestamp = "2026-11-30T10:00:00Z".parse().unwrap();
        let lease = new_lease(&c, t0);
        let at = |s: i64| t0.checked_add(SignedDuration::from_millis(s)).unwrap();
        assert!(is_alive(&lease, t0));
        assert!(is_alive(&lease, at(39_999)));
        assert!(!is_alive(&lease, at(40_000)), "renewTime + duration > now, strictly");
        assert!(!is_alive(&lease, at(41_000)));
        let mut no_renew = lease.clone();
        no_renew.spec.as_mut().unwrap().renew_time = None;
        assert!(!is_alive(&no_renew, t0));
        let mut no_duration = lease.clone();
        no_duration.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        assert!(!is_alive(&no_duration, t0));
        assert!(!is_alive(&Lease::default(), t0));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let ok = |node: &str| LeaseConfig::new(node, "hotplug-watchdog", "p", S(40), S(10));
        assert!(ok(&"a".repeat(236)).is_ok(), "236 characters make a 253-character name");
        let err = ok(&"a".repeat(237)).unwrap_err();
        assert!(matches!(err, LeaseConfigError::BadName { .. }), "{err}");
        assert!(err.to_string().contains("at most 236"), "{err}");
        for bad in ["Node-1", "node_1", "node-", "node..1", "node.-1", ""] {
            assert!(matches!(ok(bad), Err(LeaseConfigError::BadName { .. })), "{bad:?}");
        }
        assert!(ok("worker-3.example.com").is_ok());
        let cfg = |ns: &str, d: Duration, r: Duration| LeaseConfig::new("n", ns, "p", d, r);
        assert_eq!(cfg("Hotplug", S(40), S(10)), Err(LeaseConfigError::BadNamespace("Hotplug".into())));
        assert_eq!(cfg("a.b", S(40), S(10)), Err(LeaseConfigError::BadNamespace("a.b".into())));
        assert_eq!(
            cfg("ns", Duration::from_millis(40_500), S(10)),
            Err(LeaseConfigError::FractionalDuration(Duration::from_millis(40_500)))
        );
        assert_eq!(cfg("ns", S(61), S(10)), Err(LeaseConfigError::DurationTooLong(S(61))));
        assert!(cfg("ns", S(60), S(20)).is_ok(), "the longest allowed");
        assert_eq!(cfg("ns", S(60), S(21)), Err(LeaseConfigError::RenewTooSlow(S(21))));
        assert_eq!(cfg("ns", S(40), S(20)), Err(LeaseConfigError::RenewNotUnderHalf { renew: S(20), duration: S(40) }));
        assert!(cfg("ns", S(41), S(20)).is_ok());
        assert!(cfg("ns", S(3), S(1)).is_ok(), "short values for tests");
        assert!(cfg("ns", S(40), S(10)).is_ok(), "the defaults");
    }

    #[test]
    fn renewer_patches_creates_on_404_and_backs_off_on_failure() {
        let mut r = Renewer::new(S(10));
        assert_eq!(r.next(), Write::Renew { claim: true });
        // First start on the node: no lease yet.
        assert!(!r.is_failure(Answer::NotFound));
        assert_eq!(r.answered(Answer::NotFound), Duration::ZERO);
        assert_eq!(r.next(), Write::Create);
        // Another writer created it meanwhile: claim it.
        assert!(!r.is_failure(Answer::Exists));
        assert_eq!(r.answered(Answer::Exists), Duration::ZERO);
        assert_eq!(r.next(), Write::Renew { claim: true });
        assert_eq!(r.answered(Answer::Written), S(10));
        assert_eq!(r.next(), Write::Renew { claim: false });
        // Refused: retried after 1, 2, 4, 8 s, then every interval (each jittered into the
        // upper half of its step: never later than the interval).
        for step in [S(1), S(2), S(4), S(8), S(10), S(10)] {
            assert!(r.is_failure(Answer::Failed));
            let d = r.answered(Answer::Failed);
            assert!(d >= step / 2 && d <= step, "{step:?}: {d:?}");
        }
        assert_eq!(r.next(), Write::Renew { claim: false });
        assert_eq!(r.answered(Answer::Written), S(10));
        assert!(r.answered(Answer::Failed) <= S(1), "the backoff starts over after a success");
    }

    #[test]
    fn renewer_does_not_spin_when_the_lease_keeps_vanishing() {
        let mut r = Renewer::new(S(10));
        assert_eq!(r.answered(Answer::NotFound), Duration::ZERO);
        assert_eq!(r.answered(Answer::Exists), Duration::ZERO);
        // Gone again: the third quick step in a row is a failure with a backoff.
        assert!(r.is_failure(Answer::NotFound));
        assert!(r.answered(Answer::NotFound) >= Duration::from_millis(500), "a wait, not a busy loop");
        assert_eq!(r.next(), Write::Renew { claim: true });
        assert_eq!(r.answered(Answer::NotFound), Duration::ZERO);
        assert_eq!(r.next(), Write::Create);
        assert!(r.is_failure(Answer::Failed));
        assert!(r.answered(Answer::Failed) >= S(1), "the backoff goes on growing");
        assert_eq!(r.next(), Write::Create, "a refused create is retried as a create");
    }

    #[test]
    fn renews_only_when_healthy_and_otherwise_ready() {
        assert_eq!(may_renew(Ok(()), Ok(())), Ok(()));
        assert_eq!(may_renew(Err("engine: loop ended".into()), Ok(())), Err("unhealthy: engine: loop ended".into()));
        assert_eq!(
            may_renew(Ok(()), Err("pod_conditions writes: failing: x".into())),
            Err("not ready: pod_conditions writes: failing: x".into())
        );
    }

    #[test]
    fn answers_from_write_results() {
        assert_eq!(Answer::from(WriteResult::Ok), Answer::Written);
        assert_eq!(Answer::from(WriteResult::NotFound), Answer::NotFound);
        assert_eq!(Answer::from(WriteResult::Conflict), Answer::Exists);
        use WriteResult::*;
        for failed in [Forbidden, Unauthorized, Timeout, Error, TestFailed] {
            assert_eq!(Answer::from(failed), Answer::Failed, "{failed:?}");
        }
    }
}
