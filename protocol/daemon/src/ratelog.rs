//! Rate-limited logging for every message a guest or a peer can cause: a per-call-site token
//! bucket, so that a hostile driver looping on a bad request costs a few log lines, not
//! hundreds of megabytes.
//!
//! ```ignore
//! vu_daemon::log_limited!(log::Level::Warn, "request {head}: bad descriptor");
//! ```
//!
//! Each call site may log [`BURST`] lines at once, then one line per [`REFILL`]. Lines dropped
//! meanwhile are counted and reported with the next line that gets through
//! (`... (N similar messages suppressed)`); if the flood simply stops, the last count is not
//! reported.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site may log in a burst.
pub const BURST: u32 = 10;
/// One more line is allowed per this much time, up to [`BURST`].
pub const REFILL: Duration = Duration::from_secs(1);

/// The token bucket of one call site (a `static` made by [`log_limited!`](crate::log_limited)).
pub struct LogLimiter(Mutex<Bucket>);

struct Bucket {
    tokens: u32,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter(Mutex::new(Bucket {
            tokens: BURST,
            last: None,
            suppressed: 0,
        }))
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines suppressed since
    /// the last one that got through, `None` if this one is suppressed (and counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match b.last {
            None => b.last = Some(now),
            Some(last) => {
                let gained = now.saturating_duration_since(last).as_nanos() / REFILL.as_nanos();
                if gained > 0 {
                    b.tokens = (u128::from(b.tokens) + gained).min(u128::from(BURST)) as u32;
                    b.last = Some(now);
                }
            }
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::log!` with a per-call-site rate limit ([`BURST`](crate::ratelog::BURST)
/// lines, then one per [`REFILL`](crate::ratelog::REFILL)); see
/// [`ratelog`](crate::ratelog).
#[macro_export]
macro_rules! log_limited {
    ($lvl:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::ratelog::LogLimiter =
            $crate::ratelog::LogLimiter::new();
        let lvl: ::log::Level = $lvl;
        if ::log::log_enabled!(lvl) {
            match LIMITER.admit() {
                Some(0) => ::log::log!(lvl, $($arg)+),
                Some(n) => ::log::log!(
                    lvl,
                    "{} ({n} similar messages suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_refill_and_counts_suppressed() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(l.admit_at(t0), None);
        }
        assert_eq!(l.admit_at(t0 + REFILL / 2), None);
        assert_eq!(l.admit_at(t0 + REFILL), Some(1001));
        assert_eq!(l.admit_at(t0 + REFILL), None);
        // A long quiet spell refills the bucket, but only up to BURST.
        let later = t0 + REFILL * 1000;
        assert_eq!(l.admit_at(later), Some(1));
        for _ in 1..BURST {
            assert_eq!(l.admit_at(later), Some(0));
        }
        assert_eq!(l.admit_at(later), None);
    }
}
