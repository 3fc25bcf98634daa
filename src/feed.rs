//! The transition feed behind `/watch`: one JSON line per volume state change, as the
//! engine publishes it. For a client that must hear of a lost device at once without
//! polling `/metrics` (a controller, a chat bridge, the benchmark).
//!
//! A client that falls more than [`CAPACITY`] lines behind gets `{"lagged":N}` and should
//! read `/scan` again; to be sure it misses nothing, subscribe first, then read `/scan`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::VolumeLabels;
use crate::verdict::VolumeTransition;

/// Lines held for slow readers.
pub const CAPACITY: usize = 4096;

#[derive(Clone, Debug)]
pub struct Feed(broadcast::Sender<Arc<str>>);

impl Default for Feed {
    fn default() -> Self {
        Feed(broadcast::channel(CAPACITY).0)
    }
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    /// Unix time in seconds when the change was published.
    time: f64,
    #[serde(flatten)]
    volume: &'a VolumeLabels,
    /// `null` when the volume appeared.
    from: Option<&'static str>,
    /// `null` when the volume went.
    to: Option<&'static str>,
    device: Option<String>,
}

impl Feed {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.0.subscribe()
    }

    /// Costs nothing without subscribers.
    pub fn publish(&self, t: &VolumeTransition, labels: &VolumeLabels) {
        if self.0.receiver_count() == 0 {
            return;
        }
        let time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let line = Line {
            time,
            volume: labels,
            from: t.from.map(|s| s.as_str()),
            to: t.to.map(|s| s.as_str()),
            device: t.device.map(|d| d.to_string()),
        };
        let json = serde_json::to_string(&line).expect("a line always serializes");
        // No receiver left since the check: nothing to do.
        let _ = self.0.send(json.into());
    }
}
