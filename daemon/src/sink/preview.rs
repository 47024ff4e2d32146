//! Which written frames carry a preview (the encoded chunk, for live viewers), and the small
//! pool previews are copied into, so a notification never holds one of the writer's buffers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use detingest_shm::{BufferPool, PoolBuf};

/// Which written frames carry a preview: one in `every`, and no more than `max_hz` a second;
/// and the buffers previews are copied into, so a notification never holds one of the
/// writer's output buffers. One per stream (clones share the buffers), asked by the writer.
#[derive(Clone)]
pub struct PreviewPolicy {
    every: u64,
    min_interval: Option<Duration>,
    seen: u64,
    last: Option<Instant>,
    buffers: Option<BufferPool>,
}

impl PreviewPolicy {
    /// One in `every` frames (0: never), at most `max_hz` per second (0: unlimited), copied
    /// into `buffers` (`None`: no previews at all).
    pub fn new(every: u64, max_hz: f64, buffers: Option<BufferPool>) -> Self {
        Self {
            every: if buffers.is_some() { every } else { 0 },
            min_interval: (max_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / max_hz)),
            seen: 0,
            last: None,
            buffers,
        }
    }

    /// A copy of `chunk` in a preview buffer, or `None` when every buffer is still held by
    /// the sinks (the frame then goes without a preview: ingest never waits for one).
    pub fn copy(&self, chunk: &[u8]) -> Option<Arc<PoolBuf>> {
        let mut buf = self.buffers.as_ref()?.try_acquire()?;
        buf.fill_from(chunk).then(|| Arc::new(buf))
    }

    /// Whether the next written frame gets a preview.
    pub fn wants(&mut self, now: Instant) -> bool {
        if self.every == 0 {
            return false;
        }
        self.seen += 1;
        if (self.seen - 1) % self.every != 0 {
            return false;
        }
        if let (Some(min), Some(last)) = (self.min_interval, self.last) {
            if now.duration_since(last) < min {
                return false;
            }
        }
        self.last = Some(now);
        true
    }
}

/// Thins the previews one sink receives (they are picked for every sink, and another may
/// want them more often) to its own pace: at least `every` indices and `gap` apart. One per
/// stream.
#[derive(Debug, Clone, Copy)]
pub struct Thinning {
    every: u64,
    gap: Option<Duration>,
    last: Option<(u64, Instant)>,
}

impl Thinning {
    /// At least `every` indices and `gap` (if any) apart.
    pub fn new(every: u64, gap: Option<Duration>) -> Self {
        Self {
            every,
            gap,
            last: None,
        }
    }

    /// At most `max_hz` a second (0: no limit), at least `every` indices apart.
    pub fn at_most(every: u64, max_hz: f64) -> Self {
        Self::new(
            every,
            (max_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / max_hz)),
        )
    }

    /// Forgets the last one taken (a new stream in the slot).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Whether the preview of `index`, offered at `now`, is one to take (and takes it).
    pub fn take(&mut self, index: u64, now: Instant) -> bool {
        let due = self.last.is_none_or(|(last, at)| {
            index >= last + self.every && self.gap.is_none_or(|g| now.duration_since(at) >= g)
        });
        if due {
            self.last = Some((index, now));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_policy_takes_one_in_n() {
        let pool = || Some(BufferPool::new(1, 8));
        let mut p = PreviewPolicy::new(3, 0.0, pool());
        let t = Instant::now();
        let picked: Vec<bool> = (0..7).map(|_| p.wants(t)).collect();
        assert_eq!(picked, [true, false, false, true, false, false, true]);
        assert!(!(0..5).any(|_| PreviewPolicy::new(0, 0.0, pool()).wants(t)));
        assert!(
            !PreviewPolicy::new(1, 0.0, None).wants(t),
            "no buffers, no previews"
        );
    }

    #[test]
    fn preview_policy_limits_the_rate() {
        let mut p = PreviewPolicy::new(1, 10.0, Some(BufferPool::new(1, 8)));
        let t = Instant::now();
        assert!(p.wants(t));
        assert!(!p.wants(t + Duration::from_millis(50)));
        assert!(p.wants(t + Duration::from_millis(120)));
    }

    #[test]
    fn thinning_spaces_previews_by_index_and_time() {
        let t = Instant::now();
        let mut by_index = Thinning::new(3, None);
        let taken: Vec<u64> = (1..=7).filter(|&i| by_index.take(i, t)).collect();
        assert_eq!(taken, [1, 4, 7]);
        let mut by_time = Thinning::at_most(1, 10.0);
        assert!(by_time.take(1, t));
        assert!(!by_time.take(2, t + Duration::from_millis(50)));
        assert!(by_time.take(3, t + Duration::from_millis(120)));
        by_time.reset();
        assert!(
            by_time.take(1, t + Duration::from_millis(130)),
            "a new stream starts afresh"
        );
    }

    #[test]
    fn a_preview_is_skipped_while_its_buffers_are_held() {
        let p = PreviewPolicy::new(1, 0.0, Some(BufferPool::new(1, 8)));
        let held = p.copy(&[1, 2, 3]).expect("one buffer is free");
        assert_eq!(held.as_slice(), &[1, 2, 3]);
        assert!(p.copy(&[4]).is_none());
        drop(held);
        assert!(p.copy(&[4]).is_some());
        assert!(p.copy(&[0; 9]).is_none(), "too large for a preview buffer");
    }
}
