//! Warnings for packets that do not belong to the port's stream and frames dropped here: at
//! warn level, at most one line a second per port, naming each kind's count since the last
//! line (the first one at once), the module id and row/column the refused packets carried
//! against those configured, and a last line when the port stops.

use std::time::{Duration, Instant};

use super::assembler::{AssemblerConfig, PacketCounts, Place, Refused};

/// Shortest time between two warnings of one port.
const EVERY: Duration = Duration::from_secs(1);

/// What the last warning said, and when.
#[derive(Default)]
pub struct OddPacketWarnings {
    told: PacketCounts,
    at: Option<Instant>,
}

impl OddPacketWarnings {
    /// Warns about what `now_counts` has that the last warning did not say, unless a warning
    /// went out less than a second ago (`last`: the port stops, say it anyway).
    pub fn check(
        &mut self,
        source: &str,
        cfg: &AssemblerConfig,
        (c, refused): (&PacketCounts, Refused),
        now: Instant,
        last: bool,
    ) {
        let t = &self.told;
        let news = c.foreign() > t.foreign()
            || c.frames_dropped > t.frames_dropped
            || c.dropped_with_frame > t.dropped_with_frame;
        if !news || (!last && self.at.is_some_and(|at| now.duration_since(at) < EVERY)) {
            return;
        }
        let seen = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        tracing::warn!(
            source,
            mod_id = %seen(cfg.mod_id.map(|m| m.to_string())),
            place = %seen(match cfg.place {
                Place::Fixed { at: [r, c], .. } => Some(format!("[{r}, {c}]")),
                _ => None,
            }),
            mod_id_seen = %seen(refused.mod_id.map(|m| m.to_string())),
            row_column_seen = %seen(refused.row_column.map(|[r, c]| format!("[{r}, {c}]"))),
            wrong_module = c.wrong_module - t.wrong_module,
            wrong_place = c.wrong_place - t.wrong_place,
            out_of_range = c.out_of_range - t.out_of_range,
            bad_length = c.bad_length - t.bad_length,
            too_short = c.too_short - t.too_short,
            bad_version = c.bad_version - t.bad_version,
            late = c.late - t.late,
            far_ahead = c.far_ahead - t.far_ahead,
            frames_dropped = c.frames_dropped - t.frames_dropped,
            "packets refused or frames dropped since the last warning (counted in the summary)"
        );
        self.told = *c;
        self.at = Some(now);
    }
}
