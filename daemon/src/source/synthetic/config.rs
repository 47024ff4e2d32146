//! `[source.synthetic]`: the built-in detector's table, defaults and validation.

use detingest_shm::PixelType;
use serde::Deserialize;

use crate::check::{check_frame, check_range, ConfigError};

/// `[source.synthetic]`: deterministic Poisson background plus Bragg-like peaks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Frames to produce (0: until stopped).
    #[serde(default = "default_frames")]
    pub frames: u64,
    /// Frames per second (0: as fast as the pipeline takes them).
    #[serde(default)]
    pub rate_hz: f64,
    /// `[ny, nx]` of one module frame.
    #[serde(default = "default_shape")]
    pub shape: [u32; 2],
    /// Pixel type.
    #[serde(default = "default_pixel")]
    pub pixel: PixelType,
    /// Seed: frame `n`'s pixels are a pure function of (seed, n).
    #[serde(default)]
    pub seed: u64,
    /// Mean background photons per pixel (Poisson).
    #[serde(default = "default_background")]
    pub background: f64,
    /// Bragg-like peaks per frame.
    #[serde(default = "default_peaks")]
    pub peaks: u32,
    /// Distinct frames generated at start and cycled through.
    #[serde(default = "default_bank")]
    pub bank_frames: usize,
    /// Detector frame number of the first frame.
    #[serde(default = "default_first")]
    pub first_frame_number: u64,
    /// Copy each frame into a pool buffer, as a receiving socket would (default: hand the
    /// bank's frame down by reference, as a shared-memory slot is).
    #[serde(default)]
    pub copy: bool,
    /// Probability that a module frame is withheld (never sent), drawn per (frame, module).
    #[serde(default)]
    pub module_loss: f64,
    /// Module frames always withheld, as `[frame_number, module]` pairs.
    #[serde(default)]
    pub withhold: Vec<[u64; 2]>,
    /// Only these modules of the grid, as `[row, column]` (empty: every module): a daemon
    /// that takes part of a detector, the other modules made by other daemons.
    #[serde(default)]
    pub modules: Vec<[u32; 2]>,
}

impl Default for SyntheticConfig {
    /// The settings a `[source.synthetic]` table with no keys gets.
    fn default() -> Self {
        Self {
            frames: default_frames(),
            rate_hz: 0.0,
            shape: default_shape(),
            pixel: default_pixel(),
            seed: 0,
            background: default_background(),
            peaks: default_peaks(),
            bank_frames: default_bank(),
            first_frame_number: default_first(),
            copy: false,
            module_loss: 0.0,
            withhold: Vec::new(),
            modules: Vec::new(),
        }
    }
}

fn default_frames() -> u64 {
    100
}
pub(crate) fn default_shape() -> [u32; 2] {
    [512, 1024]
}
pub(crate) fn default_pixel() -> PixelType {
    PixelType::U16
}
fn default_background() -> f64 {
    0.5
}
fn default_peaks() -> u32 {
    20
}
fn default_bank() -> usize {
    16
}
fn default_first() -> u64 {
    1
}

impl SyntheticConfig {
    /// Checks what the types alone cannot, naming `source[i].synthetic.*` keys.
    /// The mask of the modules it makes on `grid` (module `m` = row * columns + column).
    pub(crate) fn module_mask(&self, grid: [u32; 2]) -> u64 {
        if self.modules.is_empty() {
            return detingest_writer::all_modules(grid[0] * grid[1]);
        }
        (self.modules.iter()).fold(0, |mask, &[r, c]| mask | 1 << (r * grid[1] + c))
    }

    /// Checks `modules` against the source's `grid`, naming `source[i].synthetic.modules`.
    pub(crate) fn check_modules(&self, i: usize, grid: [u32; 2]) -> Result<(), ConfigError> {
        let key = format!("source[{i}].synthetic.modules");
        for (k, &[r, c]) in self.modules.iter().enumerate() {
            if r >= grid[0] || c >= grid[1] {
                return Err(ConfigError::new(
                    format!("{key}[{k}]"),
                    format!("[{r}, {c}] is outside the grid {grid:?} [rows, columns]"),
                ));
            }
            if self.modules[..k].contains(&[r, c]) {
                return Err(ConfigError::new(
                    format!("{key}[{k}]"),
                    format!("[{r}, {c}] is listed twice"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("source[{i}].synthetic.{k}");
        if !(self.rate_hz.is_finite() && self.rate_hz >= 0.0) {
            return Err(ConfigError::new(key("rate_hz"), "must be a number >= 0"));
        }
        check_range(key("background"), self.background, 0.0..=1e6)?;
        check_frame(&key("shape"), self.pixel, self.shape)?;
        check_range(key("bank_frames"), self.bank_frames, 1..=4096)?;
        check_range(key("module_loss"), self.module_loss, 0.0..=1.0)?;
        if self.first_frame_number.checked_add(self.frames).is_none() {
            return Err(ConfigError::new(
                key("first_frame_number"),
                "first_frame_number + frames overflows u64",
            ));
        }
        Ok(())
    }
}
