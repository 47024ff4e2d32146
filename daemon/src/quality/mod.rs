//! Data quality while the data are taken: per-frame statistics on every frame ([`stats`],
//! on the compression workers), and on a sample of frames a spot count ([`spots`]) and a
//! radial profile around the beam centre ([`radial`]). Plain computations on pixels, with
//! the `[quality]` table ([`config`]); the sink that runs the sampled analyses is
//! `sink::quality`. docs/QUALITY.md says what each figure means.

pub mod config;
pub mod radial;
pub mod spots;
pub mod stats;
mod stats16;

pub use config::QualityConfig;

/// What the sampled analyses found in one frame.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QualityReport {
    /// Spots found.
    pub spot_count: usize,
    /// The brightest of them (at most [`MAX_SPOTS_LISTED`]), in pixels of the detector image
    /// with its module gaps.
    pub spots: Vec<spots::Spot>,
    /// The radial profile, when the beam centre is known.
    pub profile: Option<radial::Profile>,
    /// How long the analyses took, ms.
    pub analysis_ms: f64,
}

/// Spots listed in a report at most (the count has them all).
pub const MAX_SPOTS_LISTED: usize = 100;
