//! The built-in synthetic detector: Poisson background plus a few Bragg-like peaks,
//! JUNGFRAU-like by default (512 x 1024 u16).
//!
//! A bank of `bank_frames` distinct frames is generated once at start (bank frame `j` from a
//! ChaCha8 generator seeded with `seed` on stream `j`); frame number `n` is bank frame
//! `n mod bank_frames`. So frame `n`'s pixels are a pure function of (config, n) and
//! generating pixels never limits the rate. [`FrameBank::frame`] is the one place frames come
//! from: the source thread and `detingestd synth-dump` both use it.
//!
//! A detector of `M` modules sends `M` module frames per frame number; module `m` of frame
//! `n` is bank frame `n * M + m`. Module frames listed in `withhold`, or drawn with
//! probability `module_loss` (from its own generator seeded with `seed`), are never sent, as
//! a module whose packets all went missing.
//!
//! By default a frame goes down the pipeline by reference to its bank entry, with no copy, as
//! a shared-memory producer's slot does. With `copy = true` the source copies each frame into
//! a buffer of its pool first, as a receiving socket does; that copy is then its one copy.

use std::time::{Duration, Instant};

use std::sync::Arc;

use detingest_shm::{FrameBuf, FrameMeta, PixelType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Poisson};

use self::config::SyntheticConfig;
use super::{PreparedSource, SourceConfig, SourceError, SourceKind, SourceOutput};
use crate::check::ConfigError;
use crate::stream::now_ns;

pub mod config;

impl SourceKind for SyntheticConfig {
    fn table(&self) -> &'static str {
        "synthetic"
    }
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        self.check(i)
    }
    fn check_grid(&self, i: usize, grid: [u32; 2]) -> Result<(), ConfigError> {
        self.check_modules(i, grid)
    }
    fn module_mask(&self, grid: [u32; 2]) -> u64 {
        SyntheticConfig::module_mask(self, grid)
    }
    fn frame_format(&self) -> (PixelType, [u32; 2]) {
        (self.pixel, self.shape)
    }
    fn expected_frames(&self) -> u64 {
        self.frames
    }
    fn feeds_stream_alone(&self) -> bool {
        true
    }
    /// Generates the frame bank, before any thread starts.
    fn prepare(
        &self,
        src: &SourceConfig,
        _i: usize,
        modules: u32,
    ) -> Result<Box<dyn PreparedSource>, SourceError> {
        Ok(Box::new(Prepared {
            bank: FrameBank::generate(self),
            cfg: self.clone(),
            modules,
            made: SyntheticConfig::module_mask(self, src.grid),
        }))
    }
}

/// A synthetic source with its bank generated.
struct Prepared {
    cfg: SyntheticConfig,
    modules: u32,
    /// The modules it makes (all, or a daemon's part of the detector).
    made: u64,
    bank: FrameBank,
}

impl PreparedSource for Prepared {
    /// Only a copying source fills pool buffers; the bank's frames are shared otherwise.
    fn buffers(&self, input_buffers: usize) -> (usize, usize) {
        let n = if self.cfg.copy { input_buffers } else { 0 };
        (n, self.bank.frame_bytes())
    }
    fn run(self: Box<Self>, out: &mut SourceOutput) {
        run(&self.cfg, (self.modules, self.made), &self.bank, out);
    }
}

/// The pre-generated frames of one synthetic source.
pub struct FrameBank {
    frames: Vec<Arc<[u8]>>,
    pixel: PixelType,
    shape: [u32; 2],
}

impl FrameBank {
    /// Generates the bank for `cfg`. Takes about a second for 16 JUNGFRAU modules.
    pub fn generate(cfg: &SyntheticConfig) -> Self {
        let frames = (0..cfg.bank_frames as u64)
            .map(|j| Arc::from(bank_frame(cfg, j)))
            .collect();
        Self {
            frames,
            pixel: cfg.pixel,
            shape: cfg.shape,
        }
    }

    /// Number of distinct frames in the bank.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True for an empty bank (never: configuration requires at least one frame).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.pixel.frame_bytes(self.shape)
    }

    /// The pixels of frame number `n` of a single-module detector.
    pub fn frame(&self, n: u64) -> &Arc<[u8]> {
        self.module_frame(n, 0, 1)
    }

    /// The pixels of module `m` of frame number `n` on a detector of `modules` modules.
    pub fn module_frame(&self, n: u64, m: u32, modules: u32) -> &Arc<[u8]> {
        let j = n
            .wrapping_mul(u64::from(modules))
            .wrapping_add(u64::from(m));
        &self.frames[(j % self.frames.len() as u64) as usize]
    }

    /// The metadata of module `m` of frame number `n`.
    pub fn meta(&self, n: u64, m: u32) -> FrameMeta {
        FrameMeta {
            frame_number: n,
            module: m as u16,
            pixel: self.pixel,
            shape: self.shape,
            timestamp_ns: now_ns(),
            detector_timestamp: 0,
            bunch_id: 0,
            missing: detingest_shm::PacketMask::NONE,
        }
    }
}

/// A peak placed in a bank frame: centre `(y, x)` in pixels of the module frame (pixel `y`
/// spans `y..y + 1`), width and height in counts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Peak {
    /// Centre row.
    pub y: f64,
    /// Centre column.
    pub x: f64,
    /// Gaussian sigma, pixels.
    pub sigma: f64,
    /// Height, counts.
    pub height: f64,
}

/// The peaks placed in bank frame `j` (for tests of spot finders: `synth-dump --peaks`).
pub fn placed_peaks(cfg: &SyntheticConfig, j: u64) -> Vec<Peak> {
    let mut peaks = Vec::new();
    generate_frame(cfg, j, Some(&mut peaks));
    peaks
}

/// Which bank frame is module `m` of frame number `n` on a detector of `modules` modules.
pub fn bank_index(cfg: &SyntheticConfig, n: u64, m: u32, modules: u32) -> u64 {
    n.wrapping_mul(u64::from(modules))
        .wrapping_add(u64::from(m))
        % cfg.bank_frames.max(1) as u64
}

/// Photon counts of bank frame `j`, converted to the pixel type.
fn bank_frame(cfg: &SyntheticConfig, j: u64) -> Vec<u8> {
    generate_frame(cfg, j, None)
}

/// Bank frame `j`, noting its peaks in `peaks` if given.
fn generate_frame(cfg: &SyntheticConfig, j: u64, mut peaks: Option<&mut Vec<Peak>>) -> Vec<u8> {
    let [ny, nx] = cfg.shape.map(|d| d as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(j);
    let mut counts = vec![0f64; ny * nx];
    if cfg.background > 0.0 {
        // The config bounds the mean to 0..=1e6, for which Poisson::new cannot fail.
        if let Ok(bg) = Poisson::new(cfg.background) {
            for c in &mut counts {
                *c = bg.sample(&mut rng);
            }
        }
    }
    let height = Exp::new(1.0 / 2000.0).ok();
    for _ in 0..cfg.peaks {
        let (cy, cx) = (
            rng.random_range(0.0..ny as f64),
            rng.random_range(0.0..nx as f64),
        );
        let sigma: f64 = rng.random_range(0.8..2.5);
        let h = height.map_or(2000.0, |d| d.sample(&mut rng));
        if let Some(p) = peaks.as_mut() {
            p.push(Peak {
                y: cy,
                x: cx,
                sigma,
                height: h,
            });
        }
        let r = (4.0 * sigma).ceil() as isize;
        for dy in -r..=r {
            for dx in -r..=r {
                let (y, x) = (cy as isize + dy, cx as isize + dx);
                if y < 0 || x < 0 || y >= ny as isize || x >= nx as isize {
                    continue;
                }
                let d2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                counts[y as usize * nx + x as usize] +=
                    (h * (-d2 / (2.0 * sigma * sigma)).exp()).round();
            }
        }
    }
    let mut out = Vec::with_capacity(counts.len() * cfg.pixel.size());
    let max = cfg.pixel.max_value();
    for c in counts {
        let c = c.min(max);
        match cfg.pixel {
            PixelType::U8 => out.push(c as u8),
            PixelType::U16 => out.extend_from_slice(&(c as u16).to_le_bytes()),
            PixelType::U32 => out.extend_from_slice(&(c as u32).to_le_bytes()),
            PixelType::I32 => out.extend_from_slice(&(c as i32).to_le_bytes()),
            PixelType::F32 => out.extend_from_slice(&(c as f32).to_le_bytes()),
        }
    }
    out
}

/// Decides which module frames a synthetic detector withholds.
pub struct Withholding {
    listed: std::collections::HashSet<(u64, u32)>,
    loss: f64,
    rng: ChaCha8Rng,
}

impl Withholding {
    /// The withholding `cfg` describes.
    pub fn new(cfg: &SyntheticConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(u64::MAX); // apart from the bank's streams
        Self {
            listed: cfg.withhold.iter().map(|&[n, m]| (n, m as u32)).collect(),
            loss: cfg.module_loss,
            rng,
        }
    }

    /// True when module `m` of frame `n` is not sent. Call once per module frame, in order.
    pub fn withheld(&mut self, n: u64, m: u32) -> bool {
        let drawn = self.loss > 0.0 && self.rng.random_bool(self.loss);
        drawn || self.listed.contains(&(n, m))
    }
}

/// Runs a synthetic detector of `modules` modules, of which it sends those in the mask `made`,
/// until its frame count is reached or the pipeline asks it to stop.
pub fn run(
    cfg: &SyntheticConfig,
    (modules, made): (u32, u64),
    bank: &FrameBank,
    out: &mut SourceOutput,
) {
    out.start(cfg.first_frame_number);
    let mut withholding = Withholding::new(cfg);
    let period = (cfg.rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.rate_hz));
    let t0 = Instant::now();
    let count = if cfg.frames == 0 {
        u64::MAX
    } else {
        cfg.frames
    };
    let mut last = None;
    for i in 0..count {
        let Some(n) = cfg.first_frame_number.checked_add(i) else {
            break;
        };
        if out.stop_requested() {
            break;
        }
        if let Some(p) = period {
            pace(t0 + p.mul_f64(i as f64));
        }
        last = Some(n);
        for m in (0..modules).filter(|m| made & (1 << m) != 0) {
            if withholding.withheld(n, m) {
                continue;
            }
            let pixels = if cfg.copy {
                let Some(mut buf) = out.buffer(n, m as u16) else {
                    continue; // dropped, counted and logged by `buffer`
                };
                buf.fill_from(bank.module_frame(n, m, modules));
                FrameBuf::Pooled(buf)
            } else {
                FrameBuf::Shared(Arc::clone(bank.module_frame(n, m, modules)))
            };
            let _ = out.send(bank.meta(n, m), pixels); // a drop is counted by `send`
        }
    }
    out.end(last);
}

/// Sleeps until shortly before `deadline`, then spins the rest.
fn pace(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(1500) {
            std::thread::sleep(left - Duration::from_millis(1));
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic source's settings: 64 x 32, a bank of 3, plus `extra` lines.
    fn cfg(extra: &str) -> SyntheticConfig {
        let shape = if extra.contains("shape") {
            ""
        } else {
            "shape = [64, 32]"
        };
        let text = format!("{shape}\nbank_frames = 3\n{extra}");
        let c: SyntheticConfig = toml::from_str(&text).unwrap();
        c.check(0).unwrap();
        c
    }

    fn frame(bank: &FrameBank, n: u64) -> Vec<u8> {
        bank.frame(n).to_vec()
    }

    #[test]
    fn frames_are_a_pure_function_of_seed_and_number() {
        let a = FrameBank::generate(&cfg("seed = 7"));
        let b = FrameBank::generate(&cfg("seed = 7"));
        let c = FrameBank::generate(&cfg("seed = 8"));
        assert_eq!(frame(&a, 5), frame(&b, 5));
        assert_ne!(frame(&a, 5), frame(&c, 5));
    }

    #[test]
    fn the_bank_cycles_and_its_frames_differ() {
        let bank = FrameBank::generate(&cfg(""));
        assert_eq!(frame(&bank, 1), frame(&bank, 4));
        assert_ne!(frame(&bank, 1), frame(&bank, 2));
        assert_eq!(bank.frame(1).len(), bank.frame_bytes());
        assert_eq!(
            bank.module_frame(1, 1, 2),
            bank.module_frame(0, 3, 2),
            "module m of n is n * M + m"
        );
    }

    #[test]
    fn background_mean_and_peaks_look_like_a_detector() {
        let bank = FrameBank::generate(&cfg("background = 0.5\npeaks = 0\nshape = [256, 256]"));
        let f = frame(&bank, 0);
        let px: Vec<u16> = f
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mean = px.iter().map(|&p| f64::from(p)).sum::<f64>() / px.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        let peaky = FrameBank::generate(&cfg("background = 0\npeaks = 5\nshape = [256, 256]"));
        let f = frame(&peaky, 0);
        assert!(f
            .chunks_exact(2)
            .any(|b| u16::from_le_bytes([b[0], b[1]]) > 50));
    }

    #[test]
    fn withholding_takes_the_listed_module_frames_and_the_drawn_share() {
        let mut w = Withholding::new(&cfg("withhold = [[3, 1]]"));
        assert!(w.withheld(3, 1));
        assert!(!w.withheld(3, 0));
        let mut w = Withholding::new(&cfg("module_loss = 0.25\nseed = 3"));
        let n = (0..4000).filter(|&k| w.withheld(k, 0)).count();
        assert!((800..1200).contains(&n), "{n} of 4000 withheld");
    }

    #[test]
    fn every_pixel_type_renders_its_size() {
        for (p, size) in [("u8", 1), ("u16", 2), ("u32", 4), ("i32", 4), ("f32", 4)] {
            let bank = FrameBank::generate(&cfg(&format!("pixel = \"{p}\"")));
            assert_eq!(bank.frame_bytes(), 64 * 32 * size);
        }
    }
}
