//! What the engine concluded after a batch, as one immutable value: the verdicts, the
//! names to put on them, the entries passed over and the I/O errors counted. The engine
//! publishes a new one whenever any of it changes; `/metrics`, `/scan` and the cluster
//! side read the newest, and nothing reads back into the engine. Copies are cheap: the
//! verdicts are persistent maps, the rest is shared.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;

use crate::layout::Skipped;

use crate::model::{PodNames, PodUid, VolumeKey};
use crate::verdict::Verdicts;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Shared as is by readers: the writers tell "new verdicts" by pointer.
    pub verdicts: Arc<Verdicts>,
    /// Cluster mode: how a person knows each pod (namespace, VMI, name).
    pub names: Arc<BTreeMap<PodUid, PodNames>>,
    /// Entries in the kubelet tree that do not fit the layout.
    pub skipped: Arc<Vec<Skipped>>,
    /// Kernel I/O errors counted per volume since the agent started.
    pub io_errors: OrdMap<VolumeKey, u64>,
}

/// Where readers get the newest snapshot: a watch channel keeps only the latest, so a
/// slow reader never makes copies pile up.
pub type Snapshots = tokio::sync::watch::Receiver<Arc<Snapshot>>;

impl Snapshot {
    pub fn names_of(&self, uid: &PodUid) -> PodNames {
        self.names.get(uid).cloned().unwrap_or_default()
    }
}
