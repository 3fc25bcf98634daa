//! Follows the kernel log (`/dev/kmsg`, read-only) for block-layer I/O errors and turns
//! each into the device number it names. Starts at the end (read through once): errors
//! from before the agent started are `scan`'s business, not the counters'. A reader that falls behind gets
//! `EPIPE` once the kernel overwrote records it had not read; the next record's sequence
//! number says how many were lost, and that is counted, not hidden.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::poll::PollFlags;

use super::runner::{Source, Stop, Wait};
use super::{Message, Sender};
use crate::device::DevNum;
use crate::kmsg;

/// The device number of a kernel block device name (`loop5`, `nvme0n1p2`), from sysfs.
fn device_of(sysfs: &Path, name: &str) -> Option<DevNum> {
    std::fs::read_to_string(sysfs.join("class/block").join(name).join("dev")).ok()?.trim().parse().ok()
}

/// Reads the whole log buffer once (for `scan`): errors per device number.
pub fn errors_in_buffer(path: &Path, sysfs: &Path) -> io::Result<std::collections::BTreeMap<DevNum, u64>> {
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
    let mut counts = std::collections::BTreeMap::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let name = kmsg::parse_record(&buf[..n]).and_then(|r| kmsg::io_error_device(r.message));
                if let Some(dev) = name.and_then(|name| device_of(sysfs, name)) {
                    *counts.entry(dev).or_default() += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(counts)
}

const RECORDS_PER_WAKE: usize = 4096;

/// Follows the kernel log from its end, without blocking: the runner waits for it.
pub struct KernelLog {
    file: File,
    sysfs: PathBuf,
    /// The sequence number of the last record read: the next one's says how many were lost.
    last_seq: Option<u64>,
    /// The kernel overwrote records before they were read (`EPIPE`).
    overrun: bool,
    buf: Vec<u8>,
}

impl KernelLog {
    pub fn open(path: &Path, sysfs: PathBuf) -> io::Result<Self> {
        let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
        // Only what happens from now on counts, but the sequence number of the last record
        // there is is what tells, later, how many were lost: read through to the end once.
        let last_seq = skip_to_end(&mut file)?;
        Ok(KernelLog { file, sysfs, last_seq, overrun: false, buf: vec![0u8; 8192] })
    }
}

impl Source for KernelLog {
    const NAME: &'static str = "kmsg";

    fn wait(&self) -> Wait<'_> {
        Wait::Ready(self.file.as_fd(), PollFlags::POLLIN)
    }

    /// Reads the records there are, one per read. At most `RECORDS_PER_WAKE`: a log that
    /// floods faster than it is read makes many short wakes, not one that looks stalled.
    fn wake(&mut self, _: PollFlags, tx: &Sender) -> Result<(), Stop> {
        for _ in 0..RECORDS_PER_WAKE {
            let n = match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {
                    self.overrun = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let Some(record) = kmsg::parse_record(&self.buf[..n]) else { continue };
            if let Some(last) = self.last_seq {
                let lost = record.seq.saturating_sub(last + 1);
                if lost > 0 {
                    if self.overrun {
                        tracing::warn!(
                            lost,
                            "fell behind the kernel log; records were overwritten before they were read"
                        );
                    }
                    tx.send(Message::KmsgLost(lost))?;
                }
            }
            self.overrun = false;
            self.last_seq = Some(record.seq);
            let Some(name) = kmsg::io_error_device(record.message) else { continue };
            let Some(device) = device_of(&self.sysfs, name) else {
                tracing::debug!(name, "I/O error on a device that is gone from sysfs");
                continue;
            };
            tx.send(Message::IoError { device, received: Instant::now() })?;
        }
        Ok(())
    }
}

/// Reads (non-blocking) to the end of the log; the sequence number of the last record.
fn skip_to_end(file: &mut File) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 8192];
    let mut last = None;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(last),
            Ok(n) => last = kmsg::parse_record(&buf[..n]).map(|r| r.seq).or(last),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(last),
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
