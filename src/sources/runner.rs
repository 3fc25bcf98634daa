//! One runner for every source. A source says what it waits for (a descriptor the kernel
//! makes ready, or a delay before a retry) and what it does when woken; the runner owns the
//! rest: its thread, its heartbeat (`/healthz` fails when it ends or stalls in a wake),
//! its logs, and stopping it. Waiting for the kernel is the only blocking there is, and the
//! runner waits on the stop signal in the same `poll`, so every source stops at once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::channel::Disconnected;
use super::health::{Health, Heartbeat};
use super::Sender;

/// What one source knows: how to wait, and what to make of a wake-up.
pub trait Source {
    /// Names its thread, its heartbeat and its logs.
    const NAME: &'static str;

    /// What to wait for before the next [`Source::wake`].
    fn wait(&self) -> Wait<'_>;

    /// Reads what woke it and sends what it saw. `revents` are its descriptor's (empty
    /// after [`Wait::Delay`]). An error ends the source, and `/healthz` says so.
    fn wake(&mut self, revents: PollFlags, tx: &Sender) -> Result<(), Stop>;
}

pub enum Wait<'a> {
    /// Until the kernel makes the descriptor ready for one of these events.
    Ready(BorrowedFd<'a>, PollFlags),
    /// For this long (a retry).
    Delay(Duration),
}

/// Why a source ends.
#[derive(Debug)]
pub enum Stop {
    /// The engine is gone: the agent is shutting down.
    Hangup,
    Failed(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<Disconnected> for Stop {
    fn from(_: Disconnected) -> Self {
        Stop::Hangup
    }
}

/// The running sources. Stopping (or dropping) it stops them all.
pub struct Sources {
    /// Shut down to stop: the other end then reads end-of-file, which every runner polls.
    stop_signal: UnixStream,
    stopped: Arc<UnixStream>,
    running: Vec<JoinHandle<()>>,
}

impl Sources {
    pub fn new() -> io::Result<Self> {
        let (stop_signal, stopped) = UnixStream::pair()?;
        Ok(Sources { stop_signal, stopped: Arc::new(stopped), running: Vec::new() })
    }

    /// Runs the source `open` makes on a thread of its own, under a heartbeat registered
    /// in `health` once it opened. `open` runs on that thread (a libudev handle must not
    /// leave the thread that made it); this returns once it did, so that a source that
    /// cannot start is a start-up error, and nothing that happens after this returns is
    /// missed.
    pub fn spawn<S, F>(&mut self, health: &Arc<Health>, tx: Sender, open: F) -> io::Result<()>
    where
        S: Source,
        F: FnOnce() -> io::Result<S> + Send + 'static,
    {
        let health = health.clone();
        let stopped = self.stopped.clone();
        let (opened_tx, opened) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let handle = std::thread::Builder::new().name(S::NAME.into()).spawn(move || {
            crate::sched::prefer_prompt_wakeups(S::NAME);
            let mut source = match open() {
                Ok(source) => source,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            // Only a source that started is watched: one that could not open was said at start.
            let hb = health.register(S::NAME);
            let _guard = hb.guard();
            let _ = opened_tx.send(Ok(()));
            tracing::info!(source = S::NAME, "source started");
            match follow(&mut source, &stopped, &tx, &hb) {
                Ok(()) | Err(Stop::Hangup) => tracing::info!(source = S::NAME, "source stopped"),
                Err(Stop::Failed(e)) => tracing::error!(source = S::NAME, error = %e, "source failed and stopped"),
            }
        })?;
        opened.recv().map_err(|_| io::Error::other(format!("the {} thread ended before it started", S::NAME)))??;
        self.running.push(handle);
        Ok(())
    }

    /// Stops every source and waits up to `within` for their threads to end; one stuck in
    /// the kernel (a hung read) is left behind and named, not waited for.
    pub fn stop(self, within: Duration) {
        let _ = self.stop_signal.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + within;
        for handle in self.running {
            // Shutdown only: a short sleep beats a thread per join.
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!(source = handle.thread().name(), "source did not stop in time; leaving it");
            }
        }
    }
}

/// Waits and wakes the source until it ends or the stop signal comes.
fn follow<S: Source>(source: &mut S, stopped: &UnixStream, tx: &Sender, hb: &Heartbeat) -> Result<(), Stop> {
    loop {
        hb.idle();
        let revents = {
            let mut fds = vec![PollFd::new(stopped.as_fd(), PollFlags::POLLIN)];
            let timeout = match source.wait() {
                Wait::Ready(fd, events) => {
                    fds.push(PollFd::new(fd, events));
                    PollTimeout::NONE
                }
                Wait::Delay(delay) => PollTimeout::try_from(delay).unwrap_or(PollTimeout::MAX),
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Stop::Failed(e.into())),
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(());
            }
            fds.get(1).and_then(PollFd::revents).unwrap_or(PollFlags::empty())
        };
        hb.busy();
        source.wake(revents, tx)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::channel::channel;
    use crate::sources::{Message, RescanReason};

    /// Sends a rescan request each time its socket is readable, and fails on "fail".
    struct Echo(UnixStream);

    impl Source for Echo {
        const NAME: &'static str = "echo";

        fn wait(&self) -> Wait<'_> {
            Wait::Ready(self.0.as_fd(), PollFlags::POLLIN)
        }

        fn wake(&mut self, _: PollFlags, tx: &Sender) -> Result<(), Stop> {
            let mut buf = [0u8; 16];
            let n = io::Read::read(&mut self.0, &mut buf)?;
            if &buf[..n] == b"fail" {
                return Err(Stop::Failed(io::Error::other("asked to fail")));
            }
            tx.send(Message::Rescan(RescanReason::Periodic))?;
            Ok(())
        }
    }

    fn start() -> (Sources, Arc<Health>, UnixStream, crate::sources::Receiver) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let health = Arc::new(Health::default());
        let (tx, rx) = channel(4);
        let mut sources = Sources::new().unwrap();
        sources.spawn(&health, tx, move || Ok(Echo(theirs))).unwrap();
        (sources, health, ours, rx)
    }

    #[test]
    fn a_source_sends_until_stopped_and_a_stopped_one_fails_the_health_check() {
        let (sources, health, mut ours, rx) = start();
        io::Write::write_all(&mut ours, b"x").unwrap();
        let batch: Vec<Message> = rx.recv_timeout(Duration::from_secs(10)).unwrap().collect();
        assert!(matches!(batch[..], [Message::Rescan(RescanReason::Periodic)]));
        assert_eq!(health.check(Duration::from_secs(60)), Ok(()));
        sources.stop(Duration::from_secs(10));
        assert_eq!(health.check(Duration::from_secs(60)), Err("echo: loop ended".into()));
        // Its sender went with it.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn a_source_that_fails_ends_and_fails_the_health_check() {
        let (_sources, health, mut ours, _rx) = start();
        io::Write::write_all(&mut ours, b"fail").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.check(Duration::from_secs(60)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(health.check(Duration::from_secs(60)), Err("echo: loop ended".into()));
    }

    #[test]
    fn a_source_that_cannot_open_is_a_start_up_error() {
        let health = Arc::new(Health::default());
        let (tx, _rx) = channel(4);
        let err = Sources::new()
            .unwrap()
            .spawn(&health, tx, || -> io::Result<Echo> { Err(io::Error::other("no such thing")) })
            .unwrap_err();
        assert_eq!(err.to_string(), "no such thing");
        // Nothing to watch: it never ran.
        assert_eq!(health.check(Duration::from_secs(60)), Ok(()));
    }
}
