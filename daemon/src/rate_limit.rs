//! Rate-limited warnings for the per-frame path: a producer that sends nothing but malformed
//! frames must not flood the journal. The first occurrence is logged at once, then at most
//! one line per [`EVERY`], saying how many were not logged in between (every one is still
//! counted where the caller counts it).

use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub const EVERY: Duration = Duration::from_secs(10);

/// When a kind of warning was last logged, and how many were held back since.
#[derive(Debug, Default, Clone, Copy)]
pub struct RateLimit {
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    /// `Some(held back since the last line)` when this occurrence may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_goes_out_then_one_per_interval_with_the_count_held_back() {
        let mut r = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(0));
        for k in 1..1000 {
            assert_eq!(r.allow(t0 + Duration::from_millis(k)), None);
        }
        assert_eq!(r.allow(t0 + EVERY), Some(999));
        assert_eq!(r.allow(t0 + EVERY + Duration::from_secs(1)), None);
    }
}
