//! The one retry delay of the agent: exponential, capped, with jitter from a real random
//! source. Every agent of a fleet meets the same outage at the same moment (an API server
//! restart, an expired token rotated for all); delays without jitter, or with one fixed
//! per process, would bring them back in step and hit the recovering server together.
//!
//! "Equal jitter": the schedule doubles from `first` up to `max`, and each wait is drawn
//! uniformly from the upper half of that step, `[step/2, step]`. Never longer than the
//! schedule (the lease relies on a retry within its renew interval) and never shorter than
//! half of it (a failing write never becomes a busy loop).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The current step of the schedule; `None` until the first failure.
    step: Option<Duration>,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, step: None }
    }

    /// The wait before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step.map_or(self.first, |s| s.saturating_mul(2)).min(self.max);
        self.step = Some(step);
        jittered(step)
    }

    /// A success: the next failure starts the schedule over.
    pub fn reset(&mut self) {
        self.step = None;
    }

    /// Whether the last attempt failed (the schedule is under way).
    pub fn is_backing_off(&self) -> bool {
        self.step.is_some()
    }
}

/// Uniform in `[step/2, step]`, to the microsecond.
fn jittered(step: Duration) -> Duration {
    let micros = u64::try_from(step.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(micros / 2..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_within_bounds_up_to_the_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(S(1), S(10));
        assert!(!b.is_backing_off());
        for step in [1, 2, 4, 8, 10, 10] {
            let d = b.next_delay();
            assert!(d >= S(step) / 2 && d <= S(step), "step {step} s: {d:?}");
        }
        assert!(b.is_backing_off());
        b.reset();
        assert!(!b.is_backing_off());
        assert!(b.next_delay() <= S(1), "the schedule starts over");
    }

    /// Two agents that fail together do not retry together: the delays are drawn, not
    /// derived from anything the agents share.
    #[test]
    fn delays_are_spread() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..64).map(|_| Backoff::new(S(60), S(60)).next_delay()).collect();
        assert!(delays.len() > 32, "{} distinct delays of 64", delays.len());
        assert!(delays.iter().all(|d| *d >= S(30) && *d <= S(60)));
    }

    #[test]
    fn a_zero_step_is_no_wait() {
        assert_eq!(Backoff::new(Duration::ZERO, S(1)).next_delay(), Duration::ZERO);
    }
}
