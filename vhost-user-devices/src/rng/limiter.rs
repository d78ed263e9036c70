//! `--max-bytes N --period MS`: at most N bytes per period, in fixed windows. A window opens
//! at the first request after the previous one closed; once its budget is spent, requests wait
//! for the window's end (the backend arms a timer for [`RateLimiter::wait_time`]).

use std::time::{Duration, Instant};

/// A byte budget per time window.
#[derive(Debug)]
pub struct RateLimiter {
    max_bytes: u64,
    period: Duration,
    window_end: Option<Instant>,
    left: u64,
}

impl RateLimiter {
    /// At most `max_bytes` per `period` (both non-zero; the caller validates).
    pub fn new(max_bytes: u64, period: Duration) -> Self {
        RateLimiter {
            max_bytes,
            period,
            window_end: None,
            left: 0,
        }
    }

    /// Takes up to `want` bytes of the budget at `now`; returns how many were granted (0 when
    /// the current window is spent).
    pub fn grant(&mut self, want: u64, now: Instant) -> u64 {
        if self.window_end.is_none_or(|end| now >= end) {
            self.window_end = Some(now + self.period);
            self.left = self.max_bytes;
        }
        let n = want.min(self.left);
        self.left -= n;
        n
    }

    /// Returns `n` bytes of a grant that went unused (capped at the window's budget).
    pub fn give_back(&mut self, n: u64) {
        self.left = self.left.saturating_add(n).min(self.max_bytes);
    }

    /// How long until new budget is available at `now` (zero when some is left now).
    pub fn wait_time(&self, now: Instant) -> Duration {
        match self.window_end {
            Some(end) if self.left == 0 => end.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_window() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut l = RateLimiter::new(100, p);
        assert_eq!(l.grant(60, t0), 60);
        assert_eq!(l.wait_time(t0), Duration::ZERO);
        assert_eq!(l.grant(60, t0 + Duration::from_millis(10)), 40);
        assert_eq!(l.grant(1, t0 + Duration::from_millis(20)), 0);
        assert_eq!(
            l.wait_time(t0 + Duration::from_millis(20)),
            Duration::from_millis(80)
        );
        // The next window opens at the first request after the end.
        assert_eq!(l.grant(500, t0 + Duration::from_millis(150)), 100);
        assert_eq!(l.grant(1, t0 + Duration::from_millis(249)), 0);
        assert_eq!(l.grant(1, t0 + Duration::from_millis(250)), 1);
    }
}
