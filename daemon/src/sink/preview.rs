//! Which written indices carry a preview (their encoded chunks, for live viewers): each
//! sink's request has its own pace, and an index is picked when any of them wants it (each
//! sink then thins the picks to its own pace with [`Thinning`]). The small pool previews are
//! copied into keeps a notification from ever holding one of the writer's buffers.

use std::time::{Duration, Instant};

use detingest_shm::BufferPool;

use super::assembly::{PreviewBuilder, PreviewGeometry};
use super::PreviewRequest;

/// One request's pace: one index in `every`, at most one per `min_interval`.
#[derive(Debug, Clone)]
struct Pace {
    every: u64,
    min_interval: Option<Duration>,
    seen: u64,
    last: Option<Instant>,
}

impl Pace {
    fn wants(&mut self, now: Instant) -> bool {
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

/// Which written indices get a preview, and the buffers previews are copied into. One per
/// stream (clones share the buffers), asked by the writer when an index's first chunk comes.
#[derive(Clone)]
pub struct PreviewPolicy {
    paces: Vec<Pace>,
    buffers: Option<BufferPool>,
}

impl PreviewPolicy {
    /// Every request's pace (an index is picked when one wants it), copied into `buffers`
    /// (`None`: no previews at all).
    pub fn new(requests: &[PreviewRequest], buffers: Option<BufferPool>) -> Self {
        let paces = if buffers.is_some() {
            (requests.iter())
                .map(|r| Pace {
                    every: r.every,
                    min_interval: (r.max_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / r.max_hz)),
                    seen: 0,
                    last: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Self { paces, buffers }
    }

    /// No previews.
    pub fn none() -> Self {
        Self::new(&[], None)
    }

    /// Whether the next index gets a preview (every pace is asked, so each keeps count).
    pub fn wants(&mut self, now: Instant) -> bool {
        self.paces
            .iter_mut()
            .fold(false, |any, p| p.wants(now) | any)
    }

    /// A preview of `geometry` to gather an index into, or `None` when every buffer is still
    /// held by the sinks (the index then goes without one: ingest never waits for a preview).
    pub fn start(&self, geometry: &PreviewGeometry) -> Option<PreviewBuilder> {
        let buf = self.buffers.as_ref()?.try_acquire()?;
        Some(PreviewBuilder::new(buf, geometry))
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

    fn request(every: u64, max_hz: f64) -> PreviewRequest {
        PreviewRequest {
            every,
            max_hz,
            buffers: 1,
        }
    }

    #[test]
    fn preview_policy_takes_one_in_n() {
        let pool = || Some(BufferPool::new(1, 8));
        let mut p = PreviewPolicy::new(&[request(3, 0.0)], pool());
        let t = Instant::now();
        let picked: Vec<bool> = (0..7).map(|_| p.wants(t)).collect();
        assert_eq!(picked, [true, false, false, true, false, false, true]);
        assert!(!(0..5).any(|_| PreviewPolicy::new(&[request(0, 0.0)], pool()).wants(t)));
        assert!(
            !PreviewPolicy::new(&[request(1, 0.0)], None).wants(t),
            "no buffers, no previews"
        );
    }

    #[test]
    fn preview_policy_limits_the_rate() {
        let mut p = PreviewPolicy::new(&[request(1, 10.0)], Some(BufferPool::new(1, 8)));
        let t = Instant::now();
        assert!(p.wants(t));
        assert!(!p.wants(t + Duration::from_millis(50)));
        assert!(p.wants(t + Duration::from_millis(120)));
    }

    #[test]
    fn every_request_gets_its_own_pace() {
        let requests = [request(4, 0.0), request(1, 10.0)];
        let mut p = PreviewPolicy::new(&requests, Some(BufferPool::new(1, 8)));
        let t = Instant::now();
        let ms = |k: u64| t + Duration::from_millis(k);
        // Index 1 (both), 2 (neither: 10 ms after), 3 (the 10 Hz one), 4, 5 (one in 4).
        let picked: Vec<bool> = [0, 10, 150, 160, 170].map(|k| p.wants(ms(k))).to_vec();
        assert_eq!(picked, [true, false, true, false, true]);
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
        let layout = detingest_writer::RunLayout {
            pixel: detingest_shm::PixelType::U16,
            module_shape: [2, 2],
            grid: [1, 1],
            chunking: detingest_writer::Chunking::Module,
            codec: detingest_writer::Codec::None,
        };
        let g = PreviewGeometry::new(&layout, [0, 0]);
        let p = PreviewPolicy::new(&[request(1, 0.0)], Some(BufferPool::new(1, 8)));
        let held = p.start(&g).expect("one buffer is free");
        assert!(p.start(&g).is_none());
        drop(held);
        assert!(p.start(&g).is_some());
        assert!(PreviewPolicy::none().start(&g).is_none());
    }
}
