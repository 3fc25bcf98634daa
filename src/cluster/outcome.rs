//! What the agent writes to the cluster and how each write ended, as types: the metric
//! series are pre-created from these lists (`metrics.rs`), so a label value can neither be
//! misspelt in one place nor be missing from the start.

use std::time::Duration;

use tokio::time::error::Elapsed;

/// One kind of write: the `kind` label of `status_writes_total` (and of
/// `status_writes_failing` for the kinds whose failures make the agent unready).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteKind {
    /// The node's liveness Lease.
    Lease,
    /// The attachment pods' `hotplug-watchdog.io/...` conditions.
    PodConditions,
    /// The VMI's `status.volumeStatus` words (optional).
    VmiVolumeStatus,
}

impl WriteKind {
    pub const ALL: [WriteKind; 3] = [WriteKind::Lease, WriteKind::PodConditions, WriteKind::VmiVolumeStatus];

    pub fn label(self) -> &'static str {
        match self {
            WriteKind::Lease => "lease",
            WriteKind::PodConditions => "pod_conditions",
            WriteKind::VmiVolumeStatus => "vmi_volume_status",
        }
    }

    /// The kinds a consumer trusts, whose failures make the agent unready (and have a
    /// `status_writes_failing` series). Not the VMI's volumeStatus: stock KubeVirt puts
    /// such writes back by design.
    pub const TRUSTED: [WriteKind; 2] = [WriteKind::Lease, WriteKind::PodConditions];

    /// The name of its reason in `/readyz`.
    pub fn readiness(self) -> &'static str {
        match self {
            WriteKind::Lease => "lease writes",
            WriteKind::PodConditions => "pod_conditions writes",
            WriteKind::VmiVolumeStatus => "vmi_volume_status writes",
        }
    }
}

/// How one write ended: the `result` label of `status_writes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteResult {
    Ok,
    /// 409.
    Conflict,
    /// 403: RBAC or an admission policy said no.
    Forbidden,
    /// 401: the credentials were refused (an expired or revoked token).
    Unauthorized,
    /// 404: the object is gone (for the lease: there is none yet).
    NotFound,
    /// 422: a guarded JSON patch met a changed list.
    TestFailed,
    /// Accepted, then put back (KubeVirt's VMI webhook).
    Reverted,
    /// No answer within the write's timeout.
    Timeout,
    /// Anything else: a 5xx, the connection refused or cut.
    Error,
}

impl WriteResult {
    pub const ALL: [WriteResult; 9] = [
        WriteResult::Ok,
        WriteResult::Conflict,
        WriteResult::Forbidden,
        WriteResult::Unauthorized,
        WriteResult::NotFound,
        WriteResult::TestFailed,
        WriteResult::Reverted,
        WriteResult::Timeout,
        WriteResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WriteResult::Ok => "ok",
            WriteResult::Conflict => "conflict",
            WriteResult::Forbidden => "forbidden",
            WriteResult::Unauthorized => "unauthorized",
            WriteResult::NotFound => "not_found",
            WriteResult::TestFailed => "test_failed",
            WriteResult::Reverted => "reverted",
            WriteResult::Timeout => "timeout",
            WriteResult::Error => "error",
        }
    }

    /// The result of a write that took at most its timeout (`Err(Elapsed)`: it did not
    /// answer in time).
    pub fn of<T>(result: &Result<Result<T, kube::Error>, Elapsed>) -> Self {
        match result {
            Ok(Ok(_)) => WriteResult::Ok,
            Ok(Err(kube::Error::Api(s))) => match s.code {
                409 => WriteResult::Conflict,
                401 => WriteResult::Unauthorized,
                403 => WriteResult::Forbidden,
                404 => WriteResult::NotFound,
                422 => WriteResult::TestFailed,
                _ => WriteResult::Error,
            },
            Ok(Err(_)) => WriteResult::Error,
            Err(_) => WriteResult::Timeout,
        }
    }

    /// What it says about the writer's health: `Some(true)` written, `Some(false)`
    /// failing, `None` neither (the object is gone: nothing is stale and nothing is left
    /// to write).
    pub fn written(self) -> Option<bool> {
        match self {
            WriteResult::Ok => Some(true),
            WriteResult::NotFound => None,
            _ => Some(false),
        }
    }
}

/// Why a write failed, in the API server's own words (without the Status object's debug
/// dump).
pub fn error_text<T>(result: &Result<Result<T, kube::Error>, Elapsed>, timeout: Duration) -> String {
    match result {
        Ok(Err(kube::Error::Api(s))) => format!("{} ({} {})", s.message, s.code, s.reason),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("timed out after {timeout:?}"),
        Ok(Ok(_)) => "no error".into(),
    }
}

/// How the recording of one Event ended: the `result` label of `events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventResult {
    Sent,
    Failed,
    /// The queue to the API server was full (see `events::QUEUE`).
    Dropped,
}

impl EventResult {
    pub const ALL: [EventResult; 3] = [EventResult::Sent, EventResult::Failed, EventResult::Dropped];

    pub fn label(self) -> &'static str {
        match self {
            EventResult::Sent => "sent",
            EventResult::Failed => "failed",
            EventResult::Dropped => "dropped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_health_follows_the_result() {
        let labels: std::collections::BTreeSet<_> = WriteResult::ALL.map(WriteResult::label).into();
        assert_eq!(labels.len(), WriteResult::ALL.len());
        assert_eq!(WriteResult::Ok.written(), Some(true));
        assert_eq!(WriteResult::NotFound.written(), None);
        for failing in WriteResult::ALL.into_iter().filter(|r| !matches!(r, WriteResult::Ok | WriteResult::NotFound)) {
            assert_eq!(failing.written(), Some(false), "{failing:?}");
        }
    }
}
