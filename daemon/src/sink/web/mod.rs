//! The live page's sink: keeps the latest preview (its encoded chunks, copied at most a few
//! times a second; assembled with the module gaps when the page asks) and each module's missing count of the current stream, for the control
//! API's `GET /preview` and `GET /events` ([`LiveView`]). The notification thread only ever
//! `try_lock`s the preview: a page decoding it never holds up the other sinks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::assembly::{Placement, PreviewLayout};
use serde::Deserialize;

use super::{binning, Notification, NotificationSink, Sink, Thinning};
use super::{PreviewSetting, SinkContext, SinkTable, TableAt};
use crate::check::ConfigError;
use crate::contract::Counters;
use crate::quality::QualityReport;
use crate::stream::StreamInfo;
use detingest_writer::FrameStats;

/// The latest preview's encoded chunks and whose it is.
#[derive(Default)]
struct Latest {
    info: Option<Arc<StreamInfo>>,
    index: u64,
    frame_number: u64,
    layout: Option<PreviewLayout>,
    bytes: Vec<u8>,
}

/// A decoded preview, binned to fit.
#[derive(Debug, Clone)]
pub struct Image {
    /// `beamtime/source/stream`.
    pub stream: String,
    /// Its index in the stream.
    pub index: u64,
    /// The detector's frame number.
    pub frame_number: u64,
    /// `[ny, nx]` after binning.
    pub shape: [u32; 2],
    /// The binning factor (each pixel the largest of its `f x f` block).
    pub binning: u32,
    /// `u8`, `u16`, `u32`, `i32` or `f32`.
    pub dtype: &'static str,
    /// Little-endian pixels, row after row.
    pub pixels: Vec<u8>,
}

/// The latest per-frame statistics and sampled analyses, for the page's quality panel.
#[derive(Default)]
struct QualityView {
    stats: Option<(u64, FrameStats)>,
    report: Option<(u64, Arc<QualityReport>)>,
}

/// What the page reads: the latest preview and the current stream's missing modules.
pub struct LiveView {
    latest: Mutex<Latest>,
    quality: Mutex<QualityView>,
    /// Index of the latest preview (0: none yet).
    latest_index: AtomicU64,
    modules: AtomicU64,
    missing: [AtomicU64; 64],
    taken: AtomicU64,
    busy: AtomicU64,
}

impl Default for LiveView {
    fn default() -> Self {
        Self {
            latest: Mutex::default(),
            quality: Mutex::default(),
            latest_index: AtomicU64::new(0),
            modules: AtomicU64::new(0),
            missing: [const { AtomicU64::new(0) }; 64],
            taken: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }
}

impl LiveView {
    /// The index of the latest preview (0: none yet): the page fetches a new image when it
    /// changes.
    pub fn latest_index(&self) -> u64 {
        self.latest_index.load(Ordering::Relaxed)
    }

    /// The latest preview decoded and binned to at most `max_bytes` of pixels.
    pub fn image(&self, max_bytes: usize) -> Option<Image> {
        let latest = self.latest.lock().ok()?;
        let info = latest.info.as_ref()?;
        let preview = (latest.layout.as_ref()?, &latest.bytes[..]);
        let mut scratch = binning::Scratch::default();
        let (shape, factor) = scratch
            .fit(info, preview, Placement::Gaps, max_bytes)
            .map(|f| (f.shape, f.factor))?;
        Some(Image {
            stream: info.key.clone(),
            index: latest.index,
            frame_number: latest.frame_number,
            shape,
            binning: factor,
            dtype: info.pixel.name(),
            pixels: scratch.into_pixels(factor),
        })
    }

    /// The latest frame's statistics and the latest sampled analyses (the page's quality
    /// panel), as JSON.
    pub fn quality(&self) -> serde_json::Value {
        let Ok(q) = self.quality.lock() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "stats_index": q.stats.map_or(0, |s| s.0),
            "stats": q.stats.map(|(_, s)| serde_json::json!({
                "sum": s.sum, "max": s.max, "saturated": s.saturated, "masked": s.masked,
                "above_threshold": s.above_threshold,
            })),
            "report_index": q.report.as_ref().map_or(0, |r| r.0),
            "report": q.report.as_ref().map(|r| &*r.1),
        })
    }

    /// Indices each module of the current stream was missing from, module by module.
    pub fn modules_missing(&self) -> Vec<u64> {
        let n = self.modules.load(Ordering::Relaxed).min(64) as usize;
        self.missing[..n]
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .collect()
    }
}

/// `[sink.web]`: the live page's feed, built where the page is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageConfig {
    /// Images the page gets per second at most (the page redraws at most this often).
    pub preview_max_hz: f64,
}

impl Default for PageConfig {
    fn default() -> Self {
        Self {
            preview_max_hz: 4.0, // a screen's redraw is all a viewer can follow
        }
    }
}

impl SinkTable for PageConfig {
    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        if self.preview_max_hz > 0.0 {
            return Ok(());
        }
        Err(ConfigError::new(
            at.key("preview_max_hz"),
            "must be more than 0 (the page needs images)",
        ))
    }

    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: 1,
            max_hz: self.preview_max_hz,
            buffers: 2,
            keys: [None, Some("preview_max_hz"), None],
        })
    }

    fn build(
        &self,
        ctx: &SinkContext<'_>,
        _: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        Ok(ctx.page.then(|| {
            Box::new(WebSink {
                view: Arc::new(LiveView::default()),
                max_hz: self.preview_max_hz,
            }) as Box<dyn Sink>
        }))
    }
}

/// The sink (in `detingestd serve` and `demo`, which serve the page).
pub struct WebSink {
    view: Arc<LiveView>,
    max_hz: f64,
}

impl Sink for WebSink {
    fn live_view(&self) -> Option<Arc<LiveView>> {
        Some(Arc::clone(&self.view))
    }

    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        Some(Box::new(Feed {
            view: Arc::clone(&self.view),
            thinning: Thinning::at_most(1, self.max_hz),
        }))
    }

    fn counters(&self) -> Counters {
        Counters::new()
            .total(
                "previews",
                "Previews the live page took",
                self.view.taken.load(Ordering::Relaxed),
            )
            .total(
                "previews_busy",
                "Previews the live page skipped while it drew the last",
                self.view.busy.load(Ordering::Relaxed),
            )
    }
}

/// One run's feed of the view.
struct Feed {
    view: Arc<LiveView>,
    thinning: Thinning,
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        match n {
            Notification::Quality(q) => {
                if let Ok(mut v) = self.view.quality.lock() {
                    v.report = Some((q.index, Arc::clone(&q.report)));
                }
            }
            Notification::StreamStart(s) => {
                self.thinning.reset();
                if let Ok(mut v) = self.view.quality.lock() {
                    *v = QualityView::default();
                }
                for m in &self.view.missing {
                    m.store(0, Ordering::Relaxed);
                }
                let modules = u64::from(s.stream.modules);
                self.view.modules.store(modules, Ordering::Relaxed);
            }
            Notification::Frame(f) => {
                let mut missing = f.stream.all_modules() & !f.record.modules;
                while missing != 0 {
                    let m = missing.trailing_zeros() as usize;
                    self.view.missing[m].fetch_add(1, Ordering::Relaxed);
                    missing &= missing - 1;
                }
                if let (Some(s), Ok(mut q)) = (f.record.stats, self.view.quality.try_lock()) {
                    q.stats = Some((f.record.index, s));
                }
                let Some(preview) = &f.preview else {
                    return;
                };
                if !self.thinning.take(f.record.index, Instant::now()) {
                    return;
                }
                // A page decoding the last one holds the lock: skip this one, never wait.
                let Ok(mut latest) = self.view.latest.try_lock() else {
                    self.view.busy.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                latest.bytes.clear();
                latest.bytes.extend_from_slice(preview.bytes());
                latest.layout = Some(preview.layout);
                latest.info = Some(Arc::clone(&f.stream));
                latest.index = f.record.index;
                latest.frame_number = f.record.frame_number;
                self.view
                    .latest_index
                    .store(f.record.index, Ordering::Relaxed);
                self.view.taken.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixture;
    use crate::sink::{FrameNotice, Preview};
    use detingest_shm::BufferPool;

    #[test]
    fn keeps_the_latest_preview_and_counts_missing_modules() {
        let stream = fixture::stream(2);
        let sink = WebSink {
            view: Arc::new(LiveView::default()),
            max_hz: 4.0,
        };
        let mut feed = sink.for_run().unwrap();
        feed.notify(&fixture::start(&stream));
        let pool = BufferPool::new(1, 2 << 20);
        let pixels: Vec<u8> = (0..1024u32 * 1024)
            .flat_map(|i| ((i % 977) as u16).to_le_bytes())
            .collect();
        let preview = Preview::whole(pool.acquire(), stream.shape, &pixels);
        let mut record = fixture::record(&stream, 1);
        record.modules = 0b10; // module 0 missing
        feed.notify(&Notification::Frame(FrameNotice {
            stream: Arc::clone(&stream),
            record,
            preview: Some(Arc::new(preview)),
        }));
        feed.notify(&fixture::frame(&stream, 2));
        let view = sink.live_view().unwrap();
        assert_eq!(view.modules_missing(), [1, 0]);
        assert_eq!(view.latest_index(), 1);
        let image = view.image(1 << 20).expect("a preview");
        assert_eq!(
            (image.shape, image.binning, image.dtype),
            ([512, 512], 2, "u16")
        );
        let full = view.image(4 << 20).unwrap();
        assert_eq!(full.pixels, pixels, "unbinned, the pixels as written");
    }
}
