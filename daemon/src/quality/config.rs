//! `[sink.quality]` (formerly `[quality]`): per-frame statistics (on or off, the threshold), and the sampled analyses'
//! rate and settings (spot finder, radial profile), with their defaults and validation.

use serde::Deserialize;

use crate::check::{check_range, key_in, ConfigError};

/// `[quality]`: what the daemon measures of the data while it writes them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Per-frame statistics on every frame (sum, max, saturated, masked, above threshold):
    /// in the master's `frame_statistics`, the `frame` notifications, `/metrics`, the page.
    pub statistics: bool,
    /// `above_threshold` counts pixels above this many counts (0: every pixel with a count).
    pub threshold: f64,
    /// Spot finding and a radial profile on at most this many frames a second per stream
    /// (0: off). They run on their own thread on previews, never on the data path.
    pub analysis_hz: f64,
    /// A pixel is strong when it exceeds its local mean by this many local standard
    /// deviations (and by at least `spot_min_counts`).
    pub spot_sigma: f64,
    /// ... and has at least this many counts.
    pub spot_min_counts: f64,
    /// The local mean and deviation are taken over a square of `2 r + 1` pixels a side.
    pub spot_background_radius: u32,
    /// A spot is a group of at least this many strong pixels touching (8 neighbours).
    pub spot_min_pixels: u32,
    /// Bins of the radial profile, from the beam centre to the farthest pixel.
    pub profile_bins: u32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            statistics: true,
            threshold: 0.0,
            analysis_hz: 1.0,
            spot_sigma: 6.0,
            spot_min_counts: 3.0,
            spot_background_radius: 5,
            spot_min_pixels: 2,
            profile_bins: 200,
        }
    }
}

impl QualityConfig {
    /// Checks what the types alone cannot; errors name keys in table `table`
    /// (`sink.quality`, or `quality` in a file that uses that older name).
    pub fn check(&self, table: &str) -> Result<(), ConfigError> {
        let key = |k: &str| key_in(table, k);
        for (key, v) in [
            (key("threshold"), self.threshold),
            (key("analysis_hz"), self.analysis_hz),
            (key("spot_sigma"), self.spot_sigma),
            (key("spot_min_counts"), self.spot_min_counts),
        ] {
            if !v.is_finite() {
                return Err(ConfigError::new(key, "must be a finite number"));
            }
        }
        if !(0.0..=1000.0).contains(&self.analysis_hz) {
            return Err(ConfigError::new(
                key("analysis_hz"),
                "must be 0 (off) to 1000",
            ));
        }
        if self.spot_sigma <= 0.0 {
            return Err(ConfigError::new(key("spot_sigma"), "must be above 0"));
        }
        check_range(
            key("spot_background_radius"),
            self.spot_background_radius,
            1..=50,
        )?;
        check_range(key("spot_min_pixels"), self.spot_min_pixels, 1..=10_000)?;
        check_range(key("profile_bins"), self.profile_bins, 2..=100_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_key() {
        assert!(QualityConfig::default().check("quality").is_ok());
        let bad = |c: QualityConfig| c.check("quality").unwrap_err().to_string();
        let d = QualityConfig::default;
        assert!(bad(QualityConfig {
            analysis_hz: -1.0,
            ..d()
        })
        .contains("quality.analysis_hz"));
        assert!(bad(QualityConfig {
            threshold: f64::NAN,
            ..d()
        })
        .contains("quality.threshold"));
        assert!(bad(QualityConfig {
            profile_bins: 1,
            ..d()
        })
        .contains("quality.profile_bins"));
    }
}
