//! Prompt wake-ups for the threads between a kernel event and a `/watch` client: the
//! sources, the engine and the HTTP thread ask the kernel for a short EEVDF slice
//! (`sched_attr.sched_runtime` with the normal policy, Linux 6.12 and later), which is the
//! kernel's own knob for latency-sensitive tasks: a woken thread with a short slice gets
//! an early deadline and preempts the thread running on a busy CPU, instead of waiting
//! for that thread's slice to end (1.4 ms here by default; that wait was the tail of the
//! uevent -> `/watch` latency on two busy cores, see BENCHMARKS.md).
//!
//! It needs no privilege and changes nothing else: the policy and the nice value are read
//! and written back as they are (an operator's `nice` or SCHED_BATCH stays). A kernel
//! without EEVDF ignores the field; a policy that is not SCHED_OTHER is left alone. These
//! threads sleep almost all the time, so a short slice costs the node nothing; the API
//! side (the main runtime) keeps the default.

use std::io;

/// What the threads ask for: 0.1 ms, the shortest slice the kernel takes.
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` of `sched_setattr(2)` as of Linux 4.18 (`SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks for a short slice for the calling thread; says why not at debug level, never fails.
pub fn prefer_prompt_wakeups(thread: &str) {
    if let Err(e) = set_slice(SLICE_NS) {
        tracing::debug!(thread, error = %e, "cannot ask for a short scheduler slice; keeping the default");
    }
}

fn set_slice(ns: u64) -> io::Result<()> {
    use nix::libc;
    let mut attr = this_threads_attr()?;
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Ok(());
    }
    // Read-modify-write: policy, flags and nice as they are; only the slice changes.
    attr.runtime = ns;
    // SAFETY: `attr` is a valid `sched_attr` of `attr.size` bytes, read only by the kernel.
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's scheduling attributes, `size` set to the struct's.
fn this_threads_attr() -> io::Result<SchedAttr> {
    use nix::libc;
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid, writable `sched_attr` of `size` bytes; the kernel writes at
    // most `size` bytes into it. Thread 0 is the calling thread.
    let got = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    attr.size = size;
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice is asked for and the nice value an operator set stays. On a thread of its
    /// own: the test runner's threads keep their default.
    #[test]
    fn a_short_slice_keeps_the_nice_value() {
        std::thread::spawn(|| {
            // Lowering one's own priority needs no privilege; on Linux, PRIO_PROCESS 0 is
            // the calling thread.
            // SAFETY: setpriority(2) changes the calling thread's nice value only.
            let reniced = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 3) };
            assert_eq!(reniced, 0, "setpriority: {}", io::Error::last_os_error());
            set_slice(SLICE_NS).expect("sched_setattr");
            let now = this_threads_attr().expect("sched_getattr");
            assert_eq!(now.nice, 3, "the nice value set before stays");
            // A kernel without EEVDF's custom slices (before 6.12) answers 0 here.
            if now.runtime != 0 {
                assert_eq!(now.runtime, SLICE_NS);
            }
        })
        .join()
        .unwrap();
    }
}
