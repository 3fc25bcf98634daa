//! Block-device uevents through libudev (the `udev` crate): the kernel's own netlink group
//! by default, which needs no udevd and reaches a pod off the host network; or udevd's
//! re-broadcast (`--uevent-source udev`), which carries udev's properties but needs udevd
//! and the host network namespace.
//!
//! A full receive buffer makes the kernel drop messages and report `ENOBUFS` once; that
//! becomes a rescan, the only way to learn what was lost.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::health::Heartbeat;
use super::{Message, RescanReason, Sender, SeqClock, SourceKind};
use crate::inventory::Observation;
use crate::uevent::{self, UeventAction};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UeventSource {
    /// The kernel's netlink group: no daemon needed.
    Kernel,
    /// udevd's re-broadcast, after its rules ran.
    Udev,
}

/// Opens the monitor on its thread (libudev handles are not `Send`) and waits until it
/// listens, so that a failure is a start-up error and a device event after this returns
/// is not missed.
pub fn spawn(
    source: UeventSource,
    receive_buffer: Option<usize>,
    sysfs: std::path::PathBuf,
    tx: Sender,
    clock: Arc<SeqClock>,
    hb: Arc<Heartbeat>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
    let handle = std::thread::Builder::new().name("uevents".into()).spawn(move || {
        let _guard = hb.guard();
        let socket = match open(source, receive_buffer) {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        if let Err(e) = follow(&socket, &sysfs, &tx, &clock, &hb) {
            tracing::error!(error = %e, "uevent source stopped");
        }
    })?;
    ready_rx.recv().map_err(|_| std::io::Error::other("uevent thread ended before listening"))??;
    Ok(handle)
}

fn open(source: UeventSource, receive_buffer: Option<usize>) -> std::io::Result<udev::MonitorSocket> {
    let builder = match source {
        UeventSource::Kernel => udev::MonitorBuilder::new_kernel()?,
        UeventSource::Udev => udev::MonitorBuilder::new()?,
    };
    let socket = builder.match_subsystem("block")?.listen()?;
    if let Some(bytes) = receive_buffer {
        // FORCE lets root go past rmem_max; the plain one works without CAP_NET_ADMIN.
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &bytes)
            .or_else(|_| setsockopt(&socket.as_fd(), sockopt::RcvBuf, &bytes))
            .map_err(std::io::Error::from)?;
    }
    Ok(socket)
}

fn follow(
    socket: &udev::MonitorSocket,
    sysfs: &std::path::Path,
    tx: &Sender,
    clock: &SeqClock,
    hb: &Heartbeat,
) -> std::io::Result<()> {
    loop {
        hb.idle();
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        hb.busy();
        for event in socket.iter() {
            let received = Instant::now();
            let seq = clock.next();
            let props: Vec<(OsString, OsString)> =
                event.device().properties().map(|p| (p.name().to_owned(), p.value().to_owned())).collect();
            let parsed = uevent::from_properties(props.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())));
            let ev = match parsed {
                Ok(ev) => ev,
                Err(skip) => {
                    tracing::debug!(%skip, "uevent skipped");
                    continue;
                }
            };
            let present = ev.action != UeventAction::Remove;
            tracing::debug!(device = %ev.device, devname = ?ev.devname, present, "block uevent");
            // The kernel says which disk this is (DISKSEQ, and PARTN for a partition); an
            // event that does not say is read back from sysfs.
            let identity = match present {
                false => None,
                true => ev.identity().or_else(|| super::sysfs::identity(sysfs, ev.device)),
            };
            let obs = Observation::Device { seq, device: ev.device, present, identity };
            if tx
                .send(Message::Observed { obs: vec![obs], source: SourceKind::Uevent, received, skipped: Vec::new() })
                .is_err()
            {
                return Ok(());
            }
        }
        // libudev returns no event on error and leaves errno set: ENOBUFS means the kernel
        // dropped messages because our buffer was full.
        if Errno::last() == Errno::ENOBUFS {
            Errno::clear();
            tracing::warn!("uevent receive buffer overflowed; events were lost, rescanning");
            if tx.send(Message::Rescan(RescanReason::UeventOverflow)).is_err() {
                return Ok(());
            }
        }
    }
}
