//! Follows the kernel log (`/dev/kmsg`, read-only) for block-layer I/O errors and turns
//! each into the device number it names. Starts at the end (read through once): errors
//! from before the agent started are `scan`'s business, not the counters'. A reader that falls behind gets
//! `EPIPE` once the kernel overwrote records it had not read; the next record's sequence
//! number says how many were lost, and that is counted, not hidden.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::health::Heartbeat;
use super::Message;
use super::Sender;
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

/// Opens the log now (so that a missing or unreadable one is said at start) and follows
/// it on a thread.
pub fn spawn(path: PathBuf, sysfs: PathBuf, tx: Sender, hb: Arc<Heartbeat>) -> io::Result<std::thread::JoinHandle<()>> {
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&path)?;
    // Only what happens from now on counts, but the sequence number of the last record
    // there is is what tells, later, how many were lost: read through to the end once.
    let last_seq = skip_to_end(&mut file)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags - nix::fcntl::OFlag::O_NONBLOCK))?;
    std::thread::Builder::new().name("kmsg".into()).spawn(move || {
        let _guard = hb.guard();
        if let Err(e) = follow(file, last_seq, &sysfs, &tx, &hb) {
            tracing::error!(path = %path.display(), error = %e, "kernel log source stopped");
        }
    })
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

fn follow(mut file: File, mut last_seq: Option<u64>, sysfs: &Path, tx: &Sender, hb: &Heartbeat) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut overrun = false;
    loop {
        hb.idle();
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {
                overrun = true;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hb.busy();
        let Some(record) = kmsg::parse_record(&buf[..n]) else { continue };
        if let Some(last) = last_seq {
            let lost = record.seq.saturating_sub(last + 1);
            if lost > 0 {
                if overrun {
                    tracing::warn!(lost, "fell behind the kernel log; records were overwritten before they were read");
                }
                if tx.send(Message::KmsgLost(lost)).is_err() {
                    return Ok(());
                }
            }
        }
        overrun = false;
        last_seq = Some(record.seq);
        let Some(name) = kmsg::io_error_device(record.message) else { continue };
        let Some(device) = device_of(sysfs, name) else {
            tracing::debug!(name, "I/O error on a device that is gone from sysfs");
            continue;
        };
        if tx.send(Message::IoError { device, received: Instant::now() }).is_err() {
            return Ok(());
        }
    }
}
