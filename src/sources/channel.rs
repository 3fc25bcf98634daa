//! The channel from the sources (and the cluster watch) to the engine: bounded whatever the
//! event rate, and it never blocks a sender.
//!
//! What is queued is the engine's next batch, and the engine applies a batch as one (the
//! inventory keeps the newest read of each fact, whatever order reads come in), so instead
//! of a queue of messages the channel keeps what the batch must say and merges as it goes:
//!
//! - reads of the same subject (a pod directory, a device, the mount table) merge into one
//!   `Observed` message that keeps the newest read of every fact in them, as the inventory
//!   would: an older read of the same fact is redundant;
//! - rescan requests merge into one, with the reason the engine would keep (the least,
//!   [`RescanReason`] is `Ord`);
//! - a full read a source made (`Scanned`) replaces the one queued, and the reads queued
//!   before it that it supersedes (every fact of them read before it began) are dropped:
//!   the inventory would keep none of them, and the engine would log their skipped
//!   entries over the newer ones;
//! - a new cluster view replaces the queued one; I/O errors are summed per device and lost
//!   kernel log records are summed.
//!
//! **The bound**: at most `capacity` slots, one per subject read and one per device with
//! I/O errors, plus one rescan request, one full read, one cluster view and one count of
//! lost records. A read of a new subject that finds every slot taken is dropped and a full
//! rescan (`RescanReason::QueueOverflow`) is requested in its place: whatever a read says,
//! a rescan reads again. I/O errors on a new device are dropped then too, and said in the
//! log: the kernel log cannot be read again.
//!
//! **Ordering**: a message sent before the receiver takes a batch is in that batch or an
//! earlier one; one sent after is in a later one. Nothing is delivered twice.

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Message, NodeRead, ReadError, RescanReason, SourceKind};
use crate::device::DevNum;
use crate::inventory::{Observation, Seq};
use crate::layout::{PodUid, Skipped};

/// Slots of the channel `main` makes. More subjects than a node has (pods with a hotplug
/// directory: a few hundred at most; block devices: hundreds; one mount table), so only a
/// storm of new subjects while the engine is stuck fills it. A slot holds one read: about
/// 200 bytes for a uevent, one pod directory's volumes for a pod (at most `MAX_ENTRIES`
/// per directory): a few MiB when full of ordinary reads.
pub const CAPACITY: usize = 4096;

/// A bounded, coalescing channel holding at most `capacity` slots (see the module doc).
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queued: Queued::default(), senders: 1, receiver_gone: false, overflowing: false }),
        arrived: Condvar::new(),
        capacity,
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

/// The receiver is gone: the agent is shutting down.
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected;

/// Sends without ever waiting (but for the lock, held only to merge one message): usable
/// from a source's thread and from async code alike.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    queued: Queued,
    senders: usize,
    receiver_gone: bool,
    /// Said in the log since the last batch was taken: once per overflow, not per message.
    overflowing: bool,
}

/// A fact of the inventory, which keeps the newest read of each. Ordered by how a read's
/// subject is chosen: the pod it read, else the mount table, else a device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fact {
    Pod(PodUid),
    MountTable,
    Device(DevNum),
}

/// What a read was about: reads of the same subject by the same source merge. Any grouping
/// would be right (merging keeps the newest read of each fact); this one merges what a
/// source reads again and again. `None`: a read that observed nothing, only an event.
type Subject = (SourceKind, Option<Fact>);

/// The next batch, merged.
#[derive(Debug, Default)]
struct Queued {
    /// One `Observed` per subject, in the order subjects first came.
    observed: Vec<Observed>,
    by_subject: HashMap<Subject, usize>,
    /// Per device: how many errors, and when the first was received.
    io_errors: Vec<(DevNum, u64, Instant)>,
    kmsg_lost: u64,
    rescan: Option<RescanReason>,
    scanned: Option<Scanned>,
    cluster: Option<Box<crate::model::ClusterView>>,
}

#[derive(Debug)]
struct Scanned {
    reason: RescanReason,
    read: Box<Result<NodeRead, ReadError>>,
    started: Instant,
}

#[derive(Debug)]
struct Observed {
    obs: Vec<Observation>,
    source: SourceKind,
    received: Instant,
    skipped: Vec<Skipped>,
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender { shared: self.shared.clone() }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            self.shared.arrived.notify_all();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.queued = Queued::default();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sender {
    /// Queues `msg`, merged with what is queued; never waits for the receiver.
    pub fn send(&self, msg: Message) -> Result<(), Disconnected> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(Disconnected);
        }
        let capacity = self.shared.capacity;
        let state = &mut *state;
        if let Err(dropped) = state.queued.add(msg, capacity) {
            state.queued.request_rescan(RescanReason::QueueOverflow);
            if !state.overflowing {
                state.overflowing = true;
                match dropped {
                    Dropped::Read => {
                        tracing::warn!(capacity, "the engine's queue is full; dropping reads and rescanning instead")
                    }
                    Dropped::IoError(device) => {
                        tracing::warn!(capacity, %device, "the engine's queue is full; kernel I/O errors not counted")
                    }
                }
            }
        }
        self.shared.arrived.notify_one();
        Ok(())
    }
}

impl Receiver {
    /// Waits up to `timeout` for something to be queued, then takes everything queued as
    /// one batch. `Disconnected` once every sender is gone and nothing is left.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Batch, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if !state.queued.is_empty() {
                state.overflowing = false;
                return Ok(std::mem::take(&mut state.queued).into_batch());
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self.shared.arrived.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// What did not fit.
enum Dropped {
    Read,
    IoError(DevNum),
}

impl Queued {
    fn is_empty(&self) -> bool {
        self.observed.is_empty()
            && self.io_errors.is_empty()
            && self.kmsg_lost == 0
            && self.rescan.is_none()
            && self.scanned.is_none()
            && self.cluster.is_none()
    }

    fn slots(&self) -> usize {
        self.observed.len() + self.io_errors.len()
    }

    fn request_rescan(&mut self, reason: RescanReason) {
        self.rescan = Some(self.rescan.map_or(reason, |r| r.min(reason)));
    }

    fn add(&mut self, msg: Message, capacity: usize) -> Result<(), Dropped> {
        let full = self.slots() >= capacity;
        match msg {
            Message::Observed { obs, source, received, skipped } => {
                let read = Observed { obs, source, received, skipped };
                let subject = read.subject();
                match self.by_subject.get(&subject) {
                    Some(&i) => self.observed[i].merge(read),
                    None if full => return Err(Dropped::Read),
                    None => {
                        self.by_subject.insert(subject, self.observed.len());
                        self.observed.push(read);
                    }
                }
            }
            Message::Rescan(reason) => self.request_rescan(reason),
            Message::Scanned { reason, read, started } => {
                // One source makes full reads, one after the other: the newer one stands,
                // counted with the reason the engine would keep.
                let reason = self.scanned.take().map_or(reason, |older| older.reason.min(reason));
                if let Ok(read) = &*read {
                    self.drop_superseded(read.scan.seq);
                }
                self.scanned = Some(Scanned { reason, read, started });
            }
            Message::IoError { device, received } => match self.io_errors.iter_mut().find(|(d, ..)| *d == device) {
                Some((_, count, _)) => *count += 1,
                None if full => return Err(Dropped::IoError(device)),
                None => self.io_errors.push((device, 1, received)),
            },
            Message::KmsgLost(n) => self.kmsg_lost += n,
            Message::Cluster(view) => self.cluster = Some(view),
        }
        Ok(())
    }

    /// Drops the queued reads of which every fact was read before a full read that took
    /// `seq` began. (A message that observed nothing stays: it only counts an event.)
    fn drop_superseded(&mut self, seq: Seq) {
        let before = self.observed.len();
        let newer = |obs: &Observation| fact_of(obs).is_none_or(|(_, read)| read > seq);
        self.observed.retain(|o| o.obs.is_empty() || o.obs.iter().any(newer));
        if self.observed.len() != before {
            self.by_subject = self.observed.iter().enumerate().map(|(i, o)| (o.subject(), i)).collect();
        }
    }

    fn into_batch(self) -> Batch {
        let mut messages = Vec::with_capacity(self.observed.len() + 4);
        messages.extend(self.cluster.map(Message::Cluster));
        // Before the reads: those queued with it are newer (older ones were dropped).
        messages.extend(self.scanned.map(|Scanned { reason, read, started }| Message::Scanned {
            reason,
            read,
            started,
        }));
        messages.extend(self.observed.into_iter().map(|o| Message::Observed {
            obs: o.obs,
            source: o.source,
            received: o.received,
            skipped: o.skipped,
        }));
        if self.kmsg_lost > 0 {
            messages.push(Message::KmsgLost(self.kmsg_lost));
        }
        messages.extend(self.rescan.map(Message::Rescan));
        Batch { messages: messages.into_iter(), io_errors: self.io_errors.into_iter(), repeating: None }
    }
}

/// The fact an observation reads, and when its read began; `None` for what the engine
/// makes itself (a full scan) or the cluster watch sends on its own (a view).
fn fact_of(obs: &Observation) -> Option<(Fact, Seq)> {
    match obs {
        Observation::Pod { seq, uid, .. } => Some((Fact::Pod(uid.clone()), *seq)),
        Observation::Mounts { seq, .. } => Some((Fact::MountTable, *seq)),
        Observation::Device { seq, device, .. } => Some((Fact::Device(*device), *seq)),
        Observation::FullScan(_) | Observation::Cluster(_) => None,
    }
}

impl Observed {
    fn subject(&self) -> Subject {
        (self.source, self.obs.iter().filter_map(fact_of).map(|(fact, _)| fact).min())
    }

    /// Merges a newer read of the same subject into this one: the newest read of every
    /// fact stays, as in the inventory.
    fn merge(&mut self, newer: Observed) {
        for obs in newer.obs {
            let Some((fact, seq)) = fact_of(&obs) else {
                self.obs.push(obs);
                continue;
            };
            let old = self.obs.iter_mut().find_map(|o| fact_of(o).filter(|(f, _)| *f == fact).map(|(_, s)| (o, s)));
            match old {
                // As in the inventory, the later of two reads that began together wins.
                Some((old, old_seq)) if seq >= old_seq => keep_newer(old, obs),
                Some(_) => {}
                None => self.obs.push(obs),
            }
        }
        // The engine replaces a pod's skipped entries with those of each read of it.
        self.skipped = newer.skipped;
        // The latency of a batch counts from its first event.
        self.received = self.received.min(newer.received);
    }
}

/// Replaces `old` with `newer`, a newer read of the same fact. As in the inventory, a pod
/// read that failed part of the way keeps the volumes of the read before it. (One
/// difference: when that read found no hotplug directory, the inventory's older volumes
/// show through instead of none; the pod is unreadable, so `Unknown`, either way.)
fn keep_newer(old: &mut Observation, newer: Observation) {
    *old = match (&mut *old, newer) {
        (Observation::Pod { disks: before, .. }, Observation::Pod { seq, uid, disks, unreadable: Some(u) }) => {
            Observation::Pod { seq, uid, disks: before.take().or(disks), unreadable: Some(u) }
        }
        (_, newer) => newer,
    };
}

/// One batch for the engine: every message queued when it was taken, merged.
pub struct Batch {
    messages: std::vec::IntoIter<Message>,
    io_errors: std::vec::IntoIter<(DevNum, u64, Instant)>,
    /// The device whose errors are being handed out, and how many are left.
    repeating: Option<(DevNum, u64, Instant)>,
}

impl Batch {
    /// A batch of one message (the engine's own periodic rescan).
    pub fn of(msg: Message) -> Batch {
        Batch { messages: vec![msg].into_iter(), io_errors: Vec::new().into_iter(), repeating: None }
    }
}

/// I/O errors come out one message per error, as they went in, without ever being
/// expanded in memory.
impl Iterator for Batch {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if let Some(msg) = self.messages.next() {
            return Some(msg);
        }
        loop {
            match &mut self.repeating {
                Some((device, left, received)) if *left > 0 => {
                    *left -= 1;
                    return Some(Message::IoError { device: *device, received: *received });
                }
                _ => self.repeating = Some(self.io_errors.next()?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PodDisks;
    use crate::model::Unreadable;

    fn pod_read(seq: Seq, uid: &str, devices: &[(DevNum, bool)]) -> Message {
        let mut obs: Vec<Observation> = devices
            .iter()
            .map(|&(device, present)| Observation::Device { seq, device, present, identity: None })
            .collect();
        obs.push(Observation::Pod {
            seq,
            uid: uid.into(),
            disks: Some(PodDisks::Attachment(Default::default())),
            unreadable: None,
        });
        Message::Observed { obs, source: SourceKind::Inotify, received: Instant::now(), skipped: Vec::new() }
    }

    fn uevent(seq: Seq, device: DevNum, present: bool) -> Message {
        Message::Observed {
            obs: vec![Observation::Device { seq, device, present, identity: None }],
            source: SourceKind::Uevent,
            received: Instant::now(),
            skipped: Vec::new(),
        }
    }

    fn take(rx: &Receiver) -> Vec<Message> {
        rx.recv_timeout(Duration::ZERO).expect("a batch").collect()
    }

    fn observations(batch: &[Message]) -> Vec<Observation> {
        let mut all: Vec<Observation> = batch
            .iter()
            .flat_map(|m| match m {
                Message::Observed { obs, .. } => obs.clone(),
                _ => Vec::new(),
            })
            .collect();
        all.sort_by_key(|o| (fact_of(o).map(|(_, seq)| seq), format!("{o:?}")));
        all
    }

    fn rescans(batch: &[Message]) -> Vec<RescanReason> {
        batch
            .iter()
            .filter_map(|m| match m {
                Message::Rescan(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    const D1: DevNum = DevNum::new(7, 1);
    const D2: DevNum = DevNum::new(7, 2);

    #[test]
    fn reads_of_one_subject_merge_into_the_newest_of_each_fact() {
        let (tx, rx) = channel(8);
        tx.send(pod_read(1, "p", &[(D1, true)])).unwrap();
        tx.send(uevent(2, D1, false)).unwrap();
        tx.send(pod_read(3, "p", &[(D2, true)])).unwrap();
        tx.send(uevent(4, D1, true)).unwrap();
        tx.send(uevent(5, D1, false)).unwrap();
        let batch = take(&rx);
        // One message per subject: the pod, and device D1's uevents.
        assert_eq!(batch.len(), 2);
        let expected = vec![
            // The pod's read of D1 (seq 1) stays in the pod's message: only the inventory
            // compares it with the uevents; each is the newest of its own subject.
            Observation::Device { seq: 1, device: D1, present: true, identity: None },
            Observation::Device { seq: 3, device: D2, present: true, identity: None },
            Observation::Pod {
                seq: 3,
                uid: "p".into(),
                disks: Some(PodDisks::Attachment(Default::default())),
                unreadable: None,
            },
            Observation::Device { seq: 5, device: D1, present: false, identity: None },
        ];
        assert_eq!(observations(&batch), expected);
    }

    #[test]
    fn an_older_read_that_comes_late_does_not_win() {
        let (tx, rx) = channel(8);
        tx.send(uevent(5, D1, false)).unwrap();
        tx.send(uevent(4, D1, true)).unwrap();
        assert_eq!(
            observations(&take(&rx)),
            vec![Observation::Device { seq: 5, device: D1, present: false, identity: None }]
        );
    }

    #[test]
    fn a_pod_read_that_failed_keeps_the_volumes_of_the_read_before() {
        let (tx, rx) = channel(8);
        let disks = Some(PodDisks::Attachment(Default::default()));
        let read = |seq, disks, unreadable| Message::Observed {
            obs: vec![Observation::Pod { seq, uid: "p".into(), disks, unreadable }],
            source: SourceKind::Inotify,
            received: Instant::now(),
            skipped: Vec::new(),
        };
        tx.send(read(1, disks.clone(), None)).unwrap();
        tx.send(read(2, None, Some(Unreadable::Error(nix::errno::Errno::EACCES)))).unwrap();
        assert_eq!(
            observations(&take(&rx)),
            vec![Observation::Pod {
                seq: 2,
                uid: "p".into(),
                disks,
                unreadable: Some(Unreadable::Error(nix::errno::Errno::EACCES))
            }]
        );
    }

    /// A full read made by a source, as the inotify walk sends it.
    fn full_read(seq: Seq, reason: RescanReason) -> Message {
        let read = crate::sources::NodeRead {
            scan: crate::inventory::FullScan { seq, ..Default::default() },
            skipped: Vec::new(),
            malformed_mount_lines: 0,
            took: Default::default(),
        };
        Message::Scanned { reason, read: Box::new(Ok(read)), started: Instant::now() }
    }

    #[test]
    fn a_full_read_drops_the_reads_it_supersedes_and_comes_before_newer_ones() {
        let (tx, rx) = channel(8);
        tx.send(pod_read(1, "old", &[(D1, true)])).unwrap();
        // Read partly after the full read began: it stays.
        tx.send(pod_read(5, "read-later", &[(D2, true)])).unwrap();
        tx.send(uevent(2, D2, false)).unwrap();
        tx.send(full_read(3, RescanReason::InotifyOverflow)).unwrap();
        tx.send(pod_read(4, "new", &[])).unwrap();
        let batch = take(&rx);
        assert!(
            matches!(&batch[0], Message::Scanned { reason: RescanReason::InotifyOverflow, read, .. }
                if read.as_ref().as_ref().is_ok_and(|r| r.scan.seq == 3)),
            "the full read first: {batch:?}"
        );
        let pods: Vec<String> = observations(&batch)
            .into_iter()
            .filter_map(|o| match o {
                Observation::Pod { uid, .. } => Some(uid.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(pods, ["new", "read-later"], "the reads begun before seq 3 are gone, the others stay");
        assert!(
            !observations(&batch).iter().any(|o| matches!(o, Observation::Device { seq: 2, .. })),
            "the older uevent too"
        );
    }

    #[test]
    fn full_reads_queued_together_keep_the_newer_with_the_reason_the_engine_counts() {
        let (tx, rx) = channel(8);
        tx.send(full_read(1, RescanReason::InotifyOverflow)).unwrap();
        tx.send(full_read(2, RescanReason::WatchesReady)).unwrap();
        let batch = take(&rx);
        assert_eq!(batch.len(), 1);
        assert!(matches!(&batch[0], Message::Scanned { reason: RescanReason::WatchesReady, read, .. }
            if read.as_ref().as_ref().is_ok_and(|r| r.scan.seq == 2)));
    }

    #[test]
    fn counters_sum_rescans_merge_and_the_newest_cluster_view_wins() {
        let (tx, rx) = channel(8);
        for _ in 0..3 {
            tx.send(Message::IoError { device: D1, received: Instant::now() }).unwrap();
        }
        tx.send(Message::IoError { device: D2, received: Instant::now() }).unwrap();
        tx.send(Message::KmsgLost(2)).unwrap();
        tx.send(Message::KmsgLost(5)).unwrap();
        tx.send(Message::Rescan(RescanReason::Periodic)).unwrap();
        tx.send(Message::Rescan(RescanReason::WatchesReady)).unwrap();
        tx.send(Message::Rescan(RescanReason::RootGone)).unwrap();
        let mut old = crate::model::ClusterView::default();
        old.names.insert("old".into(), Default::default());
        tx.send(Message::Cluster(Box::new(old))).unwrap();
        tx.send(Message::Cluster(Box::default())).unwrap();
        let batch = take(&rx);
        let errors: Vec<DevNum> = batch
            .iter()
            .filter_map(|m| match m {
                Message::IoError { device, .. } => Some(*device),
                _ => None,
            })
            .collect();
        assert_eq!(errors, vec![D1, D1, D1, D2]);
        assert!(batch.iter().any(|m| matches!(m, Message::KmsgLost(7))));
        assert_eq!(rescans(&batch), vec![RescanReason::WatchesReady]);
        let views: Vec<_> = batch
            .iter()
            .filter_map(|m| match m {
                Message::Cluster(v) => Some(v),
                _ => None,
            })
            .collect();
        assert_eq!(views, vec![&Box::default()]);
    }

    #[test]
    fn a_full_queue_drops_new_subjects_and_asks_for_a_rescan() {
        let (tx, rx) = channel(2);
        tx.send(uevent(1, D1, true)).unwrap();
        tx.send(uevent(2, D2, true)).unwrap();
        // Full: a third subject is dropped, a known one still merges.
        tx.send(pod_read(3, "p", &[])).unwrap();
        tx.send(uevent(4, D1, false)).unwrap();
        let batch = take(&rx);
        assert_eq!(rescans(&batch), vec![RescanReason::QueueOverflow]);
        assert_eq!(
            observations(&batch),
            vec![
                Observation::Device { seq: 2, device: D2, present: true, identity: None },
                Observation::Device { seq: 4, device: D1, present: false, identity: None },
            ]
        );
        // Taking the batch makes room again.
        tx.send(pod_read(5, "p", &[])).unwrap();
        assert_eq!(rescans(&take(&rx)), vec![]);
    }

    #[test]
    fn a_storm_stays_within_the_bound() {
        let (tx, rx) = channel(16);
        for seq in 1..=100_000u64 {
            tx.send(uevent(seq, DevNum::new(7, (seq % 1000) as u32), seq % 2 == 0)).unwrap();
            tx.send(Message::IoError { device: D1, received: Instant::now() }).unwrap();
        }
        assert!(tx.shared.lock().queued.slots() <= 16);
        let batch = take(&rx);
        assert_eq!(rescans(&batch), vec![RescanReason::QueueOverflow]);
        assert_eq!(batch.iter().filter(|m| matches!(m, Message::IoError { .. })).count(), 100_000);
    }

    #[test]
    fn every_message_is_delivered_once_in_the_batch_it_was_queued_for() {
        let (tx, rx) = channel(CAPACITY);
        let sender = std::thread::spawn(move || {
            for seq in 1..=10_000u64 {
                tx.send(Message::KmsgLost(1)).unwrap();
                tx.send(uevent(seq, D1, true)).unwrap();
            }
        });
        let (mut lost, mut newest) = (0, 0);
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(batch) => {
                    for msg in batch {
                        match msg {
                            Message::KmsgLost(n) => lost += n,
                            Message::Observed { obs, .. } => {
                                let seq = fact_of(&obs[0]).unwrap().1;
                                assert!(seq > newest, "batches come in the order they were sent");
                                newest = seq;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("the sender hung"),
            }
        }
        sender.join().unwrap();
        assert_eq!((lost, newest), (10_000, 10_000));
    }

    #[test]
    fn waits_for_a_message_or_the_deadline_and_tells_a_hang_up() {
        let (tx, rx) = channel(4);
        let started = Instant::now();
        assert!(matches!(rx.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let late = tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            late.send(Message::Rescan(RescanReason::Periodic)).unwrap();
        });
        let batch: Vec<Message> = rx.recv_timeout(Duration::from_secs(10)).unwrap().collect();
        assert_eq!(rescans(&batch), vec![RescanReason::Periodic]);
        // What was queued before the last sender went is still delivered.
        tx.send(Message::KmsgLost(1)).unwrap();
        drop(tx);
        assert_eq!(rx.recv_timeout(Duration::ZERO).unwrap().count(), 1);
        assert!(matches!(rx.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected)));
    }

    #[test]
    fn a_sender_learns_the_receiver_is_gone() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert_eq!(tx.send(Message::KmsgLost(1)), Err(Disconnected));
    }
}
