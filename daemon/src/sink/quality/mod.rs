//! The quality sink: spot finding and a radial profile on a sample of written frames
//! (`[quality] analysis_hz` per stream), on its own `quality` thread, never on the data path.
//! The run's feed hands a picked preview to the thread when it is idle (a busy thread skips
//! the frame, counted) and passes what the thread found back to every sink as a
//! [`Notification::Quality`] (ZeroMQ topic `quality`, the live page).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError};

use super::assembly::{assemble, AssemblyScratch, Decode, Placement, Preview};
use super::binning::pixel_value;
use super::{Notification, NotificationSink, QualityNotice, Sink, SinkCores, Thinning};
use super::{PreviewSetting, SinkContext, SinkTable, TableAt};
use crate::check::ConfigError;
use crate::contract::Counters;
use crate::quality::spots::{find_spots, SpotScratch, SpotSettings};
use crate::quality::stats::limits;
use crate::quality::{radial, QualityConfig, QualityReport, MAX_SPOTS_LISTED};
use crate::stream::StreamInfo;
use crate::threads;

/// One frame for the thread to analyse.
struct Job {
    stream: Arc<StreamInfo>,
    index: u64,
    frame_number: u64,
    preview: Arc<Preview>,
    /// Beam centre `[x, y]` in pixels of the image with gaps, if known.
    centre: Option<[f64; 2]>,
    saturation: Option<f64>,
}

/// The sink's counters.
#[derive(Debug, Default)]
struct Stats {
    analysed: AtomicU64,
    busy: AtomicU64,
    undecodable: AtomicU64,
}

impl SinkTable for QualityConfig {
    fn check(&self, at: &TableAt) -> Result<(), ConfigError> {
        QualityConfig::check(self, at.table())
    }

    /// A frame to analyse at most `analysis_hz` a second per stream.
    fn preview(&self) -> Option<PreviewSetting> {
        Some(PreviewSetting {
            every: u64::from(self.analysis_hz > 0.0),
            max_hz: self.analysis_hz,
            buffers: 2,
            keys: [None, Some("analysis_hz"), None],
        })
    }

    fn build(
        &self,
        ctx: &SinkContext<'_>,
        at: &TableAt,
    ) -> Result<Option<Box<dyn Sink>>, ConfigError> {
        let sink = QualitySink::start(self, ctx.cores, at)?;
        Ok(sink.map(|s| Box::new(s) as Box<dyn Sink>))
    }
}

/// The quality sink (built when `[quality] analysis_hz` > 0).
pub struct QualitySink {
    cfg: QualityConfig,
    jobs: Sender<Job>,
    results: Receiver<QualityNotice>,
    stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QualitySink {
    /// Starts the `quality` thread (on the notification thread's core), or nothing when the
    /// analyses are off.
    pub fn start(
        cfg: &QualityConfig,
        cores: SinkCores,
        at: &TableAt,
    ) -> Result<Option<Self>, ConfigError> {
        if cfg.analysis_hz <= 0.0 {
            return Ok(None);
        }
        let (jobs, job_rx) = bounded::<Job>(1);
        let (result_tx, results) = bounded::<QualityNotice>(16);
        let stats = Arc::new(Stats::default());
        let (c, st) = (cfg.clone(), Arc::clone(&stats));
        let thread = threads::spawn("quality".into(), cores.notify, move || {
            analyse_loop(&c, &job_rx, &result_tx, &st)
        })
        .map_err(|e| ConfigError::new(at.key("analysis_hz"), e))?;
        Ok(Some(Self {
            cfg: cfg.clone(),
            jobs,
            results,
            stats,
            thread: Some(thread),
        }))
    }
}

impl Sink for QualitySink {
    fn for_run(&self) -> Option<Box<dyn NotificationSink>> {
        Some(Box::new(Feed {
            jobs: self.jobs.clone(),
            results: self.results.clone(),
            stats: Arc::clone(&self.stats),
            pace: Thinning::at_most(1, self.cfg.analysis_hz),
            streams: Vec::new(),
        }))
    }

    fn counters(&self) -> Counters {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters::new()
            .total(
                "analysed",
                "Frames analysed (spots, radial profile)",
                n(&self.stats.analysed),
            )
            .total(
                "skipped_busy",
                "Frames not analysed: the last was still being analysed",
                n(&self.stats.busy),
            )
            .total(
                "undecodable",
                "Frames whose chunks did not decode for the analyses",
                n(&self.stats.undecodable),
            )
    }

    fn stop(&mut self) {
        // Closing the job channel ends the thread.
        let (dead, _) = bounded(1);
        self.jobs = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One run's feed: picks frames at the sink's pace and passes results on.
struct Feed {
    jobs: Sender<Job>,
    results: Receiver<QualityNotice>,
    stats: Arc<Stats>,
    pace: Thinning,
    /// Per stream slot: its pace, beam centre and saturation value.
    streams: Vec<(Thinning, Option<[f64; 2]>, Option<f64>)>,
}

impl NotificationSink for Feed {
    fn notify(&mut self, n: &Notification) {
        if n.of_events() {
            return;
        }
        match n {
            Notification::StreamStart(s) => {
                let slot = usize::from(s.stream.slot);
                if self.streams.len() <= slot {
                    self.streams.resize(slot + 1, (self.pace, None, None));
                }
                let d = &s.detector;
                let centre = d.beam_center_x.zip(d.beam_center_y).map(|(x, y)| [x, y]);
                self.streams[slot] = (self.pace, centre, d.saturation_value);
            }
            Notification::Frame(f) => {
                let Some(preview) = &f.preview else {
                    return;
                };
                let Some((pace, centre, saturation)) =
                    self.streams.get_mut(usize::from(f.stream.slot))
                else {
                    return;
                };
                if f.record.lost() || !pace.take(f.record.index, Instant::now()) {
                    return;
                }
                let job = Job {
                    stream: Arc::clone(&f.stream),
                    index: f.record.index,
                    frame_number: f.record.frame_number,
                    preview: Arc::clone(preview),
                    centre: *centre,
                    saturation: *saturation,
                };
                if self.jobs.try_send(job).is_err() {
                    self.stats.busy.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    fn produced(&mut self) -> Option<Notification> {
        match self.results.try_recv() {
            Ok(q) => Some(Notification::Quality(q)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

/// The `quality` thread: analyses each job until the sink stops.
fn analyse_loop(
    cfg: &QualityConfig,
    jobs: &Receiver<Job>,
    results: &Sender<QualityNotice>,
    stats: &Stats,
) {
    let mut assembly = AssemblyScratch::default();
    let (mut pixels, mut valid) = (Vec::new(), Vec::new());
    let mut spots = SpotScratch::default();
    let settings = SpotSettings {
        sigma: cfg.spot_sigma,
        min_counts: cfg.spot_min_counts,
        radius: cfg.spot_background_radius,
        min_pixels: cfg.spot_min_pixels,
    };
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        let info = &job.stream;
        let how = Decode {
            codec: info.codec,
            pixel: info.pixel,
            placement: Placement::Gaps,
        };
        let layout = &job.preview.layout;
        if !assemble(layout, job.preview.bytes(), how, &mut assembly, &mut pixels) {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let shape = layout.shape_of(Placement::Gaps).map(|v| v as usize);
        let masked = limits(info.pixel, job.saturation, 0.0).masked;
        let es = info.pixel.size();
        let value = |i: usize| pixel_value(info.pixel, &pixels[i * es..(i + 1) * es]);
        layout.coverage(Placement::Gaps, &mut valid);
        for (i, ok) in valid.iter_mut().enumerate() {
            let v = value(i);
            *ok = *ok && v != masked && !v.is_nan();
        }
        let is_valid = |i: usize| valid[i];
        let mut found = find_spots(shape, value, is_valid, &settings, &mut spots);
        let spot_count = found.len();
        found.sort_by(|a, b| b.intensity.total_cmp(&a.intensity));
        found.truncate(MAX_SPOTS_LISTED);
        let profile = job
            .centre
            .map(|c| radial::radial_profile(shape, value, is_valid, c, cfg.profile_bins as usize));
        let report = QualityReport {
            spot_count,
            spots: found,
            profile,
            analysis_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        stats.analysed.fetch_add(1, Ordering::Relaxed);
        let _ = results.try_send(QualityNotice {
            stream: Arc::clone(&job.stream),
            index: job.index,
            frame_number: job.frame_number,
            report: Arc::new(report),
        });
    }
}
