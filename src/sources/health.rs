//! Liveness of the loops that feed the engine. A loop is stalled when it died or has been
//! busy with one batch for longer than the stall timeout; waiting for the kernel is not a
//! stall, so a quiet node is healthy without any polling wake-ups.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The readiness reason of a mount table that does not show the kubelet root. The lease is
/// renewed all the same: the conditions say `Unknown` (MountTableMismatch), which is the
/// truth, and a live agent's `Unknown` keeps holding old attachment pods; a lease left to
/// run out would let gates delete them after their deadline.
pub const MOUNT_TABLE_READINESS: &str = "mount table";

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    loops: Mutex<Vec<Arc<Heartbeat>>>,
    ready: AtomicBool,
    /// Other reasons not to be ready (an API watch out of sync), by name.
    unready: Mutex<std::collections::BTreeMap<&'static str, String>>,
    /// Counts readiness changes, for a task that waits for one (the lease).
    changes: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
pub struct Heartbeat {
    name: &'static str,
    alive: AtomicBool,
    /// Milliseconds since `epoch` + 1 when the current batch started; 0 when idle.
    busy_since: AtomicU64,
    epoch: Instant,
}

impl Heartbeat {
    pub fn busy(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.busy_since.store(ms, Ordering::Relaxed);
    }

    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// Marks the loop dead when its thread ends, by return or by panic.
    pub fn guard(self: &Arc<Self>) -> HeartbeatGuard {
        HeartbeatGuard(self.clone())
    }
}

pub struct HeartbeatGuard(Arc<Heartbeat>);

/// Spawns a task of the cluster side on the tokio runtime under a heartbeat named `name`:
/// when it ends, by return or by panic (unwinding drops the guard), `/healthz` fails and
/// names it, as for the node's loops. These tasks are meant to run for the agent's life.
pub fn spawn_supervised<F>(health: &Health, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let guard = health.register(name).guard();
    tokio::spawn(async move {
        let _guard = guard;
        task.await;
    })
}

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            loops: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            unready: Mutex::new(Default::default()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Health {
    pub fn register(&self, name: &'static str) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            name,
            alive: AtomicBool::new(true),
            busy_since: AtomicU64::new(0),
            epoch: self.epoch,
        });
        self.loops.lock().unwrap_or_else(|e| e.into_inner()).push(hb.clone());
        hb
    }

    /// `Err` names every stalled loop.
    pub fn check(&self, stall_after: Duration) -> Result<(), String> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        let problems: Vec<String> = loops
            .iter()
            .filter_map(|hb| {
                if !hb.alive.load(Ordering::Relaxed) {
                    return Some(format!("{}: loop ended", hb.name));
                }
                let since = hb.busy_since.load(Ordering::Relaxed);
                let busy_for = Duration::from_millis(now.saturating_sub(since));
                (since != 0 && busy_for > stall_after).then(|| format!("{}: busy for {:?}", hb.name, busy_for))
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on every readiness change (`set_ready`, `set_unready`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records (`Some(why)`) or clears (`None`) a reason not to be ready.
    pub fn set_unready(&self, name: &'static str, why: Option<String>) {
        let mut unready = self.unready.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => unready.insert(name, why),
            None => unready.remove(name),
        };
        drop(unready);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `Err` says every reason the agent is not ready.
    pub fn readiness(&self) -> Result<(), String> {
        self.readiness_apart_from(&[])
    }

    /// Readiness leaving out some reasons of [`Health::set_unready`] (the lease asks
    /// whether everything but itself, and what its conditions already say, is ready).
    pub fn readiness_apart_from(&self, names: &[&str]) -> Result<(), String> {
        let mut reasons = Vec::new();
        if !self.is_ready() {
            reasons.push("node: no full scan of the node yet".to_string());
        }
        let unready = self.unready.lock().unwrap_or_else(|e| e.into_inner());
        reasons.extend(unready.iter().filter(|(n, _)| !names.contains(n)).map(|(name, why)| format!("{name}: {why}")));
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_apart_from_leaves_out_one_reason() {
        let h = Health::default();
        h.set_ready(true);
        h.set_unready("lease writes", Some("not written yet".into()));
        assert_eq!(h.readiness(), Err("lease writes: not written yet".into()));
        assert_eq!(h.readiness_apart_from(&["lease writes"]), Ok(()));
        h.set_unready("pod watch", Some("not synced yet".into()));
        assert_eq!(h.readiness_apart_from(&["lease writes"]), Err("pod watch: not synced yet".into()));
    }

    #[test]
    fn a_supervised_task_that_ends_or_panics_fails_the_check() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let h = Arc::new(Health::default());
        rt.block_on(async {
            let forever = spawn_supervised(&h, "forever", std::future::pending());
            tokio::task::yield_now().await;
            assert_eq!(h.check(Duration::from_secs(60)), Ok(()));
            spawn_supervised(&h, "ends", async {}).await.unwrap();
            assert_eq!(h.check(Duration::from_secs(60)), Err("ends: loop ended".into()));
            let panicked = spawn_supervised(&h, "panics", async { panic!("test panic") }).await;
            assert!(panicked.unwrap_err().is_panic());
            assert_eq!(h.check(Duration::from_secs(60)), Err("ends: loop ended; panics: loop ended".into()));
            forever.abort();
        });
    }
}
