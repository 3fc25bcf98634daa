//! Block-device uevents through libudev (the `udev` crate): the kernel's own netlink group
//! by default, which needs no udevd and reaches a pod off the host network; or udevd's
//! re-broadcast (`--uevent-source udev`), which carries udev's properties but needs udevd
//! and the host network namespace.
//!
//! A full receive buffer makes the kernel drop messages and report `ENOBUFS` once; that
//! becomes a rescan, the only way to learn what was lost.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::PollFlags;

use super::runner::{Source, Stop, Wait};
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

/// The block uevent monitor. Its libudev handle is not `Send`: open it on the thread that
/// follows it (the runner does).
pub struct Uevents {
    socket: udev::MonitorSocket,
    sysfs: PathBuf,
    clock: Arc<SeqClock>,
}

impl Uevents {
    /// Listens from now on.
    pub fn open(
        source: UeventSource,
        receive_buffer: Option<usize>,
        sysfs: PathBuf,
        clock: Arc<SeqClock>,
    ) -> std::io::Result<Self> {
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
        Ok(Uevents { socket, sysfs, clock })
    }
}

impl Source for Uevents {
    const NAME: &'static str = "uevents";

    fn wait(&self) -> Wait<'_> {
        Wait::Ready(self.socket.as_fd(), PollFlags::POLLIN)
    }

    fn wake(&mut self, _: PollFlags, tx: &Sender) -> Result<(), Stop> {
        for event in self.socket.iter() {
            let received = Instant::now();
            let seq = self.clock.next();
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
                true => ev.identity().or_else(|| super::sysfs::identity(&self.sysfs, ev.device)),
            };
            let obs = Observation::Device { seq, device: ev.device, present, identity };
            tx.send(Message::Observed { obs: vec![obs], source: SourceKind::Uevent, received, skipped: Vec::new() })?;
        }
        // libudev returns no event on error and leaves errno set: ENOBUFS means the kernel
        // dropped messages because our buffer was full.
        if Errno::last() == Errno::ENOBUFS {
            Errno::clear();
            tracing::warn!("uevent receive buffer overflowed; events were lost, rescanning");
            tx.send(Message::Rescan(RescanReason::UeventOverflow))?;
        }
        Ok(())
    }
}
